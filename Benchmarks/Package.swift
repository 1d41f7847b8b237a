// swift-tools-version: 6.1
// Allocation benchmarks for tcpproxy's bridge: a separate package so `swift build` / `swift test` of the
// main package never build package-benchmark. Run with `swift package benchmark` from this folder.
import PackageDescription

let package = Package(
    name: "tcpproxy-benchmarks",
    platforms: [.macOS(.v14)],
    dependencies: [
        .package(name: "tcpproxy", path: ".."),
        // The malloc counters (`mallocCountTotal`, …) come from the MallocInterposer trait. Naming the trait
        // turns off the package's other default trait (RuntimeInterposer), whose dependency is not needed here.
        .package(url: "https://github.com/ordo-one/benchmark", from: "1.38.1", traits: ["MallocInterposer"]),
        .package(url: "https://github.com/apple/swift-nio.git", from: "2.100.0"),
        .package(url: "https://github.com/apple/swift-log.git", from: "1.16.0"),
        .package(url: "https://github.com/swift-server/swift-service-lifecycle.git", from: "2.6.0"),
    ],
    targets: [
        .executableTarget(
            name: "BridgeAllocations",
            dependencies: [
                .product(name: "Benchmark", package: "benchmark"),
                .product(name: "TCPProxyCore", package: "tcpproxy"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
            ],
            path: "Benchmarks/BridgeAllocations",
            plugins: [
                .plugin(name: "BenchmarkPlugin", package: "benchmark")
            ]
        )
    ],
    swiftLanguageModes: [.v6]
)
