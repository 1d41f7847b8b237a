/// Reading a process's `--metrics` endpoint.
enum PrometheusText {
    /// `/metrics` of a process started with `--metrics 127.0.0.1:0`.
    static func scrape(_ proxy: ProxyProcess) async throws -> String {
        guard let line = await proxy.waitForLine(containing: "metrics served at", timeout: 5) else {
            throw ProxyProcessError.notListening(proxy.stderr)
        }
        let address = line.components(separatedBy: "metrics served at ")[1].prefix { $0 != " " && $0 != "\"" }
        guard let port = address.split(separator: ":").last.flatMap({ Int($0) }) else {
            throw ProxyProcessError.notListening(line)
        }
        let socket = try TestSocket.connect(port: port)
        defer { socket.close() }
        try socket.send("GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
        let response = try await onThread { try socket.readToEnd(timeout: 5) }
        return String(decoding: response.bytes, as: UTF8.self)
    }

    /// The value of the first sample of `name` whose line contains `label`.
    static func value(_ text: String, _ name: String, _ label: String? = nil) -> Double? {
        text.split(separator: "\n").first { line in
            line.hasPrefix(name + "{") && (label.map { line.contains($0) } ?? true)
        }.flatMap { Double($0.split(separator: " ").last!) }
    }
}
