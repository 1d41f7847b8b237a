import Testing

@testable import TCPProxyCore

@Suite("run CONFIG.yaml: the file and its reloads")
struct RunFileTests {
    @Test("each listener becomes its mode's command line; process-wide keys become the settings")
    func commandLines() throws {
        let file = try RunFile(
            yaml: """
                threads: 2
                log-level: debug
                metrics: 127.0.0.1:9100
                listeners:
                  - name: web
                    mode: forward
                    listen: 127.0.0.1:8080
                    target: [10.0.0.1:80, "10.0.0.2:80,weight=2"]
                    accept-proxy-protocol: true
                    log-data: false
                  - mode: socks
                    listen: ":1080"
                    deny-destination:
                      - 127.0.0.0/8
                      - ::1/128
                """
        )
        #expect(file.settings == ["--threads=2", "--log-level=debug", "--metrics=127.0.0.1:9100"])
        #expect(
            file.entries == [
                RunFile.Entry(
                    name: "web",
                    mode: "forward",
                    arguments: [
                        "--listen=127.0.0.1:8080", "--target=10.0.0.1:80", "--target=10.0.0.2:80,weight=2",
                        "--accept-proxy-protocol",
                    ]
                ),
                RunFile.Entry(
                    name: "socks-2",
                    mode: "socks",
                    arguments: ["--listen=:1080", "--deny-destination=127.0.0.0/8", "--deny-destination=::1/128"]
                ),
            ]
        )
    }

    @Test("defaults go to every listener; a listener's own value wins")
    func defaults() throws {
        let file = try RunFile(
            yaml: """
                defaults:
                  stall-timeout: 30
                  allow: [10.0.0.0/8]
                listeners:
                  - {name: a, mode: forward, listen: ":1", target: "h:2"}
                  - {name: b, mode: forward, listen: ":3", target: "h:4", stall-timeout: 5}
                """
        )
        #expect(file.entries[0].arguments == ["--stall-timeout=30", "--allow=10.0.0.0/8", "--listen=:1", "--target=h:2"])
        #expect(file.entries[1].arguments == ["--allow=10.0.0.0/8", "--listen=:3", "--target=h:4", "--stall-timeout=5"])
    }

    @Test("a default goes only to the listeners whose mode has the option; one that no mode has is refused at its line")
    func defaultsByMode() throws {
        @Sendable func modeHas(_ mode: String, _ option: String) -> Bool { option != "handshake-timeout" || mode == "socks" }
        let file = try RunFile(
            yaml: """
                defaults:
                  handshake-timeout: 3
                  stall-timeout: 30
                listeners:
                  - {name: f, mode: forward, listen: ":1", target: "h:2"}
                  - {name: s, mode: socks, listen: ":3"}
                """,
            modeHas: modeHas
        )
        #expect(file.entries[0].arguments == ["--stall-timeout=30", "--listen=:1", "--target=h:2"])
        #expect(file.entries[1].arguments == ["--handshake-timeout=3", "--stall-timeout=30", "--listen=:3"])
        #expect(throws: RunFileError("line 2: `bogus` in `defaults` is an option of no mode (see tcpproxy MODE --help)")) {
            try RunFile(yaml: "defaults:\n  bogus: 1\nlisteners:\n  - {mode: forward, listen: \":1\", target: \"h:2\"}\n") {
                _, option in option != "bogus"
            }
        }
    }

    @Test("a list repeats an option that repeats, and a one-item list is that value")
    func lists() throws {
        let file = try RunFile(
            yaml: "listeners:\n  - mode: forward\n    listen: [\":1\"]\n    target: [\"a:1\", \"b:1\"]\n    allow: [10.0.0.0/8, \"::1\"]\n")
        #expect(file.entries[0].arguments == ["--listen=:1", "--target=a:1", "--target=b:1", "--allow=10.0.0.0/8", "--allow=::1"])
    }

    @Test("a quoted \"true\" is a value, not a flag")
    func quotedTrue() throws {
        let file = try RunFile(yaml: "listeners:\n  - {mode: forward, listen: \":1\", target: \"true\"}\n")
        #expect(file.entries[0].arguments == ["--listen=:1", "--target=true"])
    }

    @Test(
        "bad files are refused with one line naming what is wrong",
        arguments: [
            ("", "expected a mapping"),
            ("- a\n- b\n", "expected a mapping"),
            ("listeners: [\n", "line 2: not valid YAML: did not find expected node content (while parsing a flow node in line 2)"),
            ("listeners:\n  - mode: forward\n    target: a\n    target: b\n", "line 3: `target` given twice in one mapping"),
            ("listeners:\n  - {mode: forward, help: true}\n", "line 2: `help` is not an option of a listener"),
            ("threads: 2\n", "no listeners"),
            ("listeners: []\n", "no listeners"),
            ("listeners: {a: 1}\n", "line 1: `listeners` must be a list"),
            ("listener:\n  - mode: forward\n", "unknown key `listener`"),
            ("listeners:\n  - mode: fwd\n", "line 2: unknown mode `fwd`"),
            ("listeners:\n  - listen: \":1\"\n", "line 2: listener 1 has no `mode`"),
            ("listeners:\n  - mode: forward\n    threads: 2\n", "line 3: `threads` applies to the whole process"),
            ("defaults:\n  log-level: debug\nlisteners:\n  - mode: forward\n", "line 2: `log-level` applies to the whole process"),
            ("defaults:\n  mode: socks\nlisteners:\n  - mode: forward\n", "`mode` cannot be a default"),
            ("listeners:\n  - mode: forward\n    --listen: \":1\"\n", "line 3: a key must be an option name"),
            ("listeners:\n  - mode: forward\n    target: {a: b}\n", "line 3: `target` must be a value or a list"),
            ("listeners:\n  - mode: forward\n    target: [[a]]\n", "`target` must be a value or a list"),
            ("listeners:\n  - {name: x, mode: forward}\n  - {name: x, mode: socks}\n", "line 3: two listeners are named `x`"),
            ("listeners:\n  - mode: socks\n    listen: [\":1\", \":2\"]\n", "line 3: `listen` takes one address"),
            ("listeners:\n  - mode: forward\n    stall-timeout: [1, 2]\n", "line 3: `stall-timeout` takes one value, not a list"),
            ("defaults:\n  balance: [random, leastconn]\nlisteners:\n  - mode: forward\n", "line 2: `balance` takes one value"),
            ("threads: [1, 2]\nlisteners:\n  - mode: forward\n", "line 1: `threads` takes one value"),
            ("listeners:\n  - {mode: demux, target: [\"a:1\", \"b:1\"]}\n", "line 2: `target` takes one value"),
            (
                "listeners:\n  - &b {mode: forward, listen: \":1\", target: \"a:1\"}\n  - name: y\n    <<: *b\n",
                "line 4: YAML merge keys (`<<`) are not supported",
            ),
            ("listeners:\n  - {name: \"a b\", mode: forward}\n", "invalid name `a b`"),
            ("listeners:\n  - 3\n", "line 2: listener 1 must be a mapping"),
        ]
    )
    func badFiles(text: String, message: String) {
        #expect {
            try RunFile(yaml: text)
        } throws: { error in
            let description = "\(error)"
            return description.contains(message) && !description.contains("\n")
        }
    }

    @Test("a file that cannot be read names itself and the reason")
    func unreadable() {
        #expect(throws: RunFileError("cannot read /nonexistent/run.yaml: no such file or directory")) {
            try RunFile(contentsOfFile: "/nonexistent/run.yaml")
        }
    }

    @Test("a reload keeps equal entries, replaces changed ones, stops removed ones and starts new ones")
    func changes() {
        let a = RunFile.Entry(name: "a", mode: "forward", arguments: ["--listen", ":1", "--target", "h:1"])
        let b = RunFile.Entry(name: "b", mode: "forward", arguments: ["--listen", ":2", "--target", "h:2"])
        let c = RunFile.Entry(name: "c", mode: "socks", arguments: ["--listen", ":3"])
        var changedB = b
        changedB.arguments += ["--idle-timeout", "60"]
        var otherMode = a
        otherMode.mode = "socks"

        #expect(RunFileChanges(from: [a, b], to: [a, b]) == RunFileChanges(kept: ["a", "b"]))
        #expect(
            RunFileChanges(from: [a, b], to: [changedB, c, a])
                == RunFileChanges(kept: ["a"], started: ["c"], replaced: ["b"])
        )
        #expect(RunFileChanges(from: [a, b, c], to: [c]) == RunFileChanges(kept: ["c"], stopped: ["a", "b"]))
        #expect(RunFileChanges(from: [a], to: [otherMode]) == RunFileChanges(replaced: ["a"]))

        // Options in another order are the same listener; targets in another order are not.
        let first = RunFile.Entry(name: "x", mode: "forward", arguments: ["--listen=:1", "--target=a", "--target=b", "--idle-timeout=5"])
        let reordered = RunFile.Entry(name: "x", mode: "forward", arguments: ["--idle-timeout=5", "--target=a", "--listen=:1", "--target=b"])
        let swapped = RunFile.Entry(name: "x", mode: "forward", arguments: ["--listen=:1", "--target=b", "--target=a", "--idle-timeout=5"])
        #expect(RunFileChanges(from: [first], to: [reordered]) == RunFileChanges(kept: ["x"]))
        #expect(RunFileChanges(from: [first], to: [swapped]) == RunFileChanges(replaced: ["x"]))
    }
}

extension RunFileChanges {
    init(kept: [String] = [], started: [String] = [], replaced: [String] = [], stopped: [String] = []) {
        self.init(from: [], to: [])
        self.kept = kept
        self.started = started
        self.replaced = replaced
        self.stopped = stopped
    }
}
