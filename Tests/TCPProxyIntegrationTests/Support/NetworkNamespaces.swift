import Foundation
import Testing

#if canImport(Glibc)
import Glibc
#endif

/// Real network topologies for transparent-mode tests: network namespaces joined by veth pairs, with
/// addresses that exist only inside them, so the tests can install firewall rules and routes without
/// touching the machine's own network.
///
/// The test process reaches into a namespace without running a program there: a fresh thread enters
/// it (`setns`), and a socket created on that thread, or a process started from it, belongs to that
/// namespace for good. So the tests keep using ``TestSocket`` and ``ProxyProcess``.
enum NetworkNamespaces {
    /// Why namespace tests cannot run on this machine, or `nil` when they can. Worked out once, by
    /// creating and deleting a throwaway namespace.
    static let unavailableReason: String? = {
        guard getuid() == 0 else {
            return "network namespace tests need root (ip netns, iptables): running as uid \(getuid())"
        }
        for tool in ["ip", "iptables", "ip6tables", "nft"] where Self.path(of: tool) == nil {
            return "network namespace tests need '\(tool)', which is not installed (.ci/run installs it)"
        }
        let probe = "tcpproxy-probe-\(getpid())"
        let added = Command.run(["ip", "netns", "add", probe])
        guard added.status == 0 else {
            return "cannot create network namespaces here (ip netns add: \(added.output.trimmingCharacters(in: .whitespacesAndNewlines)))"
        }
        defer { _ = Command.run(["ip", "netns", "del", probe]) }
        do {
            let fd = try Self.socket(in: probe, family: AF_INET)
            Glibc.close(fd)
        } catch {
            return "cannot enter a network namespace here (setns: \(error))"
        }
        Self.removeStaleNamespaces()
        return nil
    }()

    /// Deletes namespaces that an earlier test process (`tcpproxy-PID-…`, PID no longer running) left
    /// behind because it was killed before its `defer`s ran.
    private static func removeStaleNamespaces() {
        let names = (try? FileManager.default.contentsOfDirectory(atPath: "/run/netns")) ?? []
        for name in names where name.hasPrefix("tcpproxy-") {
            let fields = name.split(separator: "-")
            guard fields.count >= 3, let pid = Int32(fields[fields[1] == "probe" ? 2 : 1]), pid != getpid() else { continue }
            if kill(pid, 0) != 0 && errno == ESRCH {
                Command.run(["ip", "netns", "del", name])
            }
        }
    }

    static var available: Bool { unavailableReason == nil }

    /// The full path of `tool` in the usual system directories, or `nil`.
    static func path(of tool: String) -> String? {
        ["/usr/sbin", "/usr/bin", "/sbin", "/bin", "/usr/local/sbin", "/usr/local/bin"]
            .map { "\($0)/\(tool)" }
            .first { FileManager.default.isExecutableFile(atPath: $0) }
    }

    // MARK: Entering a namespace

    private typealias SetNamespace = @convention(c) (Int32, Int32) -> Int32
    /// `setns(2)`; Glibc's Swift overlay does not import it.
    private static let setNamespace: SetNamespace? = dlsym(nil, "setns").map { unsafeBitCast($0, to: SetNamespace.self) }
    private static let cloneNewNet: Int32 = 0x4000_0000

    /// Moves the calling thread into the network namespace `name` (`/run/netns/NAME`). Only for threads
    /// that end soon after: nothing moves them back.
    static func enter(_ name: String) throws {
        guard let setNamespace = Self.setNamespace else { throw SocketError.system("setns not found", ENOSYS) }
        let fd = open("/run/netns/\(name)", O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { throw SocketError.system("open /run/netns/\(name)", errno) }
        defer { Glibc.close(fd) }
        guard setNamespace(fd, Self.cloneNewNet) == 0 else { throw SocketError.system("setns \(name)", errno) }
    }

    /// Runs `body` on a fresh thread inside namespace `name`; the thread ends with it.
    static func inside<T: Sendable>(_ name: String, _ body: @escaping @Sendable () throws -> T) async throws -> T {
        try await onThread {
            try NetworkNamespaces.enter(name)
            return try body()
        }
    }

    /// A TCP socket that lives in namespace `name` (synchronously, on a throwaway thread).
    static func socket(in name: String, family: Int32) throws -> Int32 {
        let result = Shared<Result<Int32, Error>?>(nil)
        let done = DispatchSemaphore(value: 0)
        let thread = Thread {
            result.value = Result {
                try NetworkNamespaces.enter(name)
                return try TestSocket.makeSocket(family: family)
            }
            done.signal()
        }
        thread.stackSize = 256 * 1024
        thread.start()
        done.wait()
        return try result.value!.get()
    }
}

/// Runs a system command to completion, bounded by a timeout.
enum Command {
    /// Runs `arguments` (the first is looked up in the system directories) with `environment` added,
    /// `input` on standard input; returns the exit status (-1 if it had to be killed) and stdout+stderr.
    @discardableResult
    static func run(
        _ arguments: [String],
        environment: [String: String] = [:],
        input: String? = nil,
        timeout: Double = 20
    ) -> (status: Int32, output: String) {
        let process = Process()
        let executable = arguments[0].hasPrefix("/") ? arguments[0] : NetworkNamespaces.path(of: arguments[0]) ?? arguments[0]
        process.executableURL = URL(fileURLWithPath: executable)
        process.arguments = Array(arguments.dropFirst())
        process.environment = ProcessInfo.processInfo.environment.merging(environment) { $1 }
        let output = Pipe()
        process.standardOutput = output
        process.standardError = output
        let stdin = Pipe()
        process.standardInput = input == nil ? FileHandle.nullDevice : stdin
        do { try process.run() } catch { return (-1, "cannot run \(executable): \(error)") }
        try? output.fileHandleForWriting.close()
        if let input {
            stdin.fileHandleForWriting.write(Data(input.utf8))
            try? stdin.fileHandleForWriting.close()
        }
        let pid = process.processIdentifier
        let finished = Shared(false)
        let watchdog = Thread {
            let deadline = now() + timeout
            while !finished.value && now() < deadline { usleep(20_000) }
            if !finished.value { _ = kill(pid, SIGKILL) }
        }
        watchdog.start()
        let data = output.fileHandleForReading.readDataToEndOfFile()
        process.waitUntilExit()
        finished.value = true
        let status = process.terminationReason == .exit ? process.terminationStatus : -1
        return (status, String(decoding: data, as: UTF8.self))
    }
}

/// Client, router and server namespaces joined by two veth pairs, as in docs/TRANSPARENT.md:
///
///     client c0 10.77.1.2 --- r1 10.77.1.1 [router] r2 10.77.2.1 --- s0 10.77.2.2 server
///                fd77:1::2       fd77:1::1           fd77:2::1          fd77:2::2
///
/// The client's and the server's default routes go through the router, which forwards. Names are
/// unique per process and topology; `destroy()` deletes the namespaces (and with them the veths).
final class Topology: @unchecked Sendable {
    enum Family: String, Sendable, CustomStringConvertible {
        case ipv4, ipv6
        var description: String { self.rawValue }
        var socketFamily: Int32 { self == .ipv4 ? AF_INET : AF_INET6 }
    }

    enum Role: String, Sendable { case client, router, server }

    static let clientAddress: [Family: String] = [.ipv4: "10.77.1.2", .ipv6: "fd77:1::2"]
    static let routerClientSide: [Family: String] = [.ipv4: "10.77.1.1", .ipv6: "fd77:1::1"]
    static let routerServerSide: [Family: String] = [.ipv4: "10.77.2.1", .ipv6: "fd77:2::1"]
    static let serverAddress: [Family: String] = [.ipv4: "10.77.2.2", .ipv6: "fd77:2::2"]
    /// The router's interface towards the client: `IN_IF` in the docs' rules.
    static let clientInterface = "r1"
    /// The client's interface towards the router.
    static let clientSideInterface = "c0"
    static let proxyPort = 15001
    static let serverPort = 7000

    /// `HOST:PORT` as tcpproxy logs it: `10.77.2.2:7000`, `[fd77:2::2]:7000`.
    static func endpoint(_ host: String, _ port: Int) -> String {
        host.contains(":") ? "[\(host)]:\(port)" : "\(host):\(port)"
    }

    private static let counter = Shared(0)

    let client: String
    let router: String
    let server: String
    private let destroyed = Shared(false)

    private init(prefix: String) {
        self.client = "\(prefix)-c"
        self.router = "\(prefix)-r"
        self.server = "\(prefix)-s"
    }

    func namespace(_ role: Role) -> String {
        switch role {
        case .client: self.client
        case .router: self.router
        case .server: self.server
        }
    }

    /// Builds the namespaces, links, addresses and routes. On failure, removes what it made and throws.
    static func create() async throws -> Topology {
        let number = Self.counter.update { value -> Int in
            value += 1
            return value
        }
        let topology = Topology(prefix: "tcpproxy-\(getpid())-\(number)")
        do {
            try await onThread { try topology.build() }
        } catch {
            topology.destroy()
            throw error
        }
        return topology
    }

    private func build() throws {
        let (c, r, s) = (self.client, self.router, self.server)
        let steps: [[String]] = [
            ["ip", "netns", "add", c], ["ip", "netns", "add", r], ["ip", "netns", "add", s],
        ]
        // No duplicate address detection: with it, new links keep tentative link-local addresses for
        // a second or two, and neighbour discovery for spoofed IPv6 sources waits for them.
        let noDAD = "echo 0 > /proc/sys/net/ipv6/conf/default/accept_dad; echo 0 > /proc/sys/net/ipv6/conf/all/accept_dad"
        let links: [[String]] = [c, r, s].map { ["ip", "netns", "exec", $0, "sh", "-c", noDAD] } + [
            ["ip", "link", "add", "c0", "netns", c, "type", "veth", "peer", "name", "r1", "netns", r],
            ["ip", "link", "add", "s0", "netns", s, "type", "veth", "peer", "name", "r2", "netns", r],
            ["ip", "-n", c, "link", "set", "lo", "up"], ["ip", "-n", r, "link", "set", "lo", "up"],
            ["ip", "-n", s, "link", "set", "lo", "up"],
            ["ip", "-n", c, "link", "set", "c0", "up"], ["ip", "-n", r, "link", "set", "r1", "up"],
            ["ip", "-n", r, "link", "set", "r2", "up"], ["ip", "-n", s, "link", "set", "s0", "up"],
            ["ip", "-n", c, "addr", "add", "10.77.1.2/24", "dev", "c0"],
            ["ip", "-n", c, "addr", "add", "fd77:1::2/64", "dev", "c0", "nodad"],
            ["ip", "-n", r, "addr", "add", "10.77.1.1/24", "dev", "r1"],
            ["ip", "-n", r, "addr", "add", "fd77:1::1/64", "dev", "r1", "nodad"],
            ["ip", "-n", r, "addr", "add", "10.77.2.1/24", "dev", "r2"],
            ["ip", "-n", r, "addr", "add", "fd77:2::1/64", "dev", "r2", "nodad"],
            ["ip", "-n", s, "addr", "add", "10.77.2.2/24", "dev", "s0"],
            ["ip", "-n", s, "addr", "add", "fd77:2::2/64", "dev", "s0", "nodad"],
            ["ip", "-n", c, "route", "add", "default", "via", "10.77.1.1"],
            ["ip", "-n", c, "-6", "route", "add", "default", "via", "fd77:1::1"],
            ["ip", "-n", s, "route", "add", "default", "via", "10.77.2.1"],
            ["ip", "-n", s, "-6", "route", "add", "default", "via", "fd77:2::1"],
            [
                "ip", "netns", "exec", r, "sh", "-c",
                "echo 1 > /proc/sys/net/ipv4/ip_forward; echo 1 > /proc/sys/net/ipv6/conf/all/forwarding",
            ],
        ]
        for step in steps + links {
            let result = Command.run(step)
            guard result.status == 0 else {
                throw TopologyError.command(step.joined(separator: " "), result.output)
            }
        }
    }

    /// Deletes the namespaces (idempotent). Processes in them must have been killed first.
    func destroy() {
        guard !self.destroyed.update({ value -> Bool in
            defer { value = true }
            return value
        }) else { return }
        for name in [self.client, self.router, self.server] {
            Command.run(["ip", "netns", "del", name])
        }
    }

    // MARK: Rules

    /// Runs a shell script in the router namespace with `IN_IF` and `PROXY_PORT` set, as
    /// docs/TRANSPARENT.md says to.
    func runInRouter(_ script: String) async throws {
        let router = self.router
        let result = await onThreadNonThrowing {
            Command.run(
                ["ip", "netns", "exec", router, "sh", "-e", "-c", script],
                environment: ["IN_IF": Topology.clientInterface, "PROXY_PORT": "\(Topology.proxyPort)"]
            )
        }
        guard result.status == 0 else { throw TopologyError.command(script, result.output) }
    }

    /// The IPv6 link-local address (`fe80::...`) of `interface` in `role`'s namespace.
    func linkLocalAddress(of interface: String, in role: Role) throws -> String {
        let command = ["ip", "-n", self.namespace(role), "-6", "-o", "addr", "show", "dev", interface, "scope", "link"]
        let result = Command.run(command)
        // "3: r1    inet6 fe80::a8c1:abff:fe12:3456/64 scope link ..."
        guard result.status == 0, let field = result.output.split(separator: " ").first(where: { $0.hasPrefix("fe80:") }),
            let address = field.split(separator: "/").first
        else { throw TopologyError.command(command.joined(separator: " "), result.output) }
        return String(address)
    }

    /// The index of `interface` in `role`'s namespace (a link-local address's scope there).
    func interfaceIndex(of interface: String, in role: Role) throws -> Int {
        let command = ["ip", "-n", self.namespace(role), "-o", "link", "show", "dev", interface]
        let result = Command.run(command)
        // "2: c0@if3: <BROADCAST,..."
        guard result.status == 0, let index = result.output.split(separator: ":").first.flatMap({ Int($0) }) else {
            throw TopologyError.command(command.joined(separator: " "), result.output)
        }
        return index
    }

    /// Installs the docs' block `<!-- tested: NAME -->` in the router namespace.
    func installRules(_ name: String) async throws {
        try await self.runInRouter(try TransparentDocs.block(name))
    }

    // MARK: Processes and sockets

    /// Starts `tcpproxy ARGUMENTS` inside the router namespace and waits for its `listening on` line.
    func startProxy(_ arguments: [String], timeout: Double = 15) async throws -> ProxyProcess {
        let proxy = try await NetworkNamespaces.inside(self.router) { try ProxyProcess(arguments: arguments) }
        guard await proxy.waitForLine(containing: "info listening on", timeout: timeout) != nil else {
            proxy.kill()
            throw ProxyProcessError.notListening(proxy.stderr)
        }
        return proxy
    }

    /// Connects from `role`'s namespace to HOST:PORT.
    func connect(from role: Role, to host: String, port: Int, timeout: Double = 5) async throws -> TestSocket {
        let namespace = self.namespace(role)
        return try await onThread {
            let fd = try NetworkNamespaces.socket(in: namespace, family: host.contains(":") ? AF_INET6 : AF_INET)
            let socket = TestSocket(adopting: fd)
            let result = try TestSocket.withAddress(host: host, port: port) { address, length, _ in
                Glibc.connect(fd, address, length)
            }
            if result != 0 {
                guard errno == EINPROGRESS else { throw SocketError.system("connect to \(host):\(port)", errno) }
                guard try socket.poll(events: Int16(POLLOUT), timeout: timeout) else {
                    throw SocketError.timeout("connect to \(host):\(port)")
                }
                let error = socket.pendingError()
                guard error == 0 else { throw SocketError.system("connect to \(host):\(port)", error) }
            }
            return socket
        }
    }

    /// A listener on `[::]:PORT` (IPv4 and IPv6) in the server namespace.
    func listenInServer(port: Int = Topology.serverPort) throws -> NamespaceListener {
        try NamespaceListener(namespace: self.server, port: port)
    }
}

enum TopologyError: Error, CustomStringConvertible {
    case command(String, String)
    case docs(String)

    var description: String {
        switch self {
        case .command(let command, let output): "command failed: \(command)\n\(output)"
        case .docs(let problem): "docs/TRANSPARENT.md: \(problem)"
        }
    }
}

/// A dual-stack TCP listener inside a namespace whose accepted connections report their peer's address.
final class NamespaceListener: @unchecked Sendable {
    private let socket: TestSocket

    init(namespace: String, port: Int) throws {
        let fd = try NetworkNamespaces.socket(in: namespace, family: AF_INET6)
        self.socket = TestSocket(adopting: fd)
        self.socket.setOption(SOL_SOCKET, SO_REUSEADDR, 1)
        let bound = try TestSocket.withAddress(host: "::", port: port) { address, length, _ in bind(fd, address, length) }
        guard bound == 0 else { throw SocketError.system("bind [::]:\(port)", errno) }
        guard listen(fd, 64) == 0 else { throw SocketError.system("listen", errno) }
    }

    /// The next connection and its peer's address (`10.77.2.1`, `fd77:2::1`; IPv4-mapped shown as IPv4).
    func accept(timeout: Double) throws -> (socket: TestSocket, peer: String) {
        guard try self.socket.poll(events: Int16(POLLIN), timeout: timeout) else {
            throw SocketError.timeout("accept")
        }
        var storage = sockaddr_in6()
        var length = socklen_t(MemoryLayout<sockaddr_in6>.size)
        let fd = withUnsafeMutablePointer(to: &storage) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { Glibc.accept(self.socket.fd, $0, &length) }
        }
        guard fd >= 0 else { throw SocketError.system("accept", errno) }
        _ = fcntl(fd, F_SETFD, FD_CLOEXEC)
        var text = [CChar](repeating: 0, count: Int(INET6_ADDRSTRLEN))
        var address = storage.sin6_addr
        inet_ntop(AF_INET6, &address, &text, socklen_t(text.count))
        var peer = String(decoding: text.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
        if peer.hasPrefix("::ffff:") { peer.removeFirst("::ffff:".count) }
        return (TestSocket(adopting: fd), peer)
    }

    /// Whether a connection is waiting (without taking it).
    func hasPendingConnection(within seconds: Double) -> Bool {
        (try? self.socket.poll(events: Int16(POLLIN), timeout: seconds)) ?? false
    }

    func close() { self.socket.close() }
}

/// The tested shell blocks of docs/TRANSPARENT.md: a line `<!-- tested: NAME -->`, then a ```sh fence.
enum TransparentDocs {
    static func block(_ name: String) throws -> String {
        var directory = URL(fileURLWithPath: #filePath).deletingLastPathComponent()
        while directory.path != "/" {
            let docs = directory.appendingPathComponent("docs/TRANSPARENT.md")
            if FileManager.default.fileExists(atPath: docs.path) {
                return try Self.block(name, in: String(contentsOf: docs, encoding: .utf8))
            }
            directory.deleteLastPathComponent()
        }
        throw TopologyError.docs("not found above \(#filePath)")
    }

    static func block(_ name: String, in text: String) throws -> String {
        let lines = text.components(separatedBy: "\n")
        guard let marker = lines.firstIndex(of: "<!-- tested: \(name) -->") else {
            throw TopologyError.docs("no block '\(name)'")
        }
        guard marker + 1 < lines.count, lines[marker + 1] == "```sh",
            let end = lines[(marker + 2)...].firstIndex(of: "```")
        else { throw TopologyError.docs("block '\(name)' is not followed by a ```sh fence") }
        return lines[(marker + 2)..<end].joined(separator: "\n") + "\n"
    }
}

/// `onThread` for work that cannot throw.
func onThreadNonThrowing<T: Sendable>(_ body: @escaping @Sendable () -> T) async -> T {
    await withCheckedContinuation { continuation in
        let thread = Thread { continuation.resume(returning: body()) }
        thread.stackSize = 1 << 20
        thread.start()
    }
}
