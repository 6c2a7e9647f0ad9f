// swift-tools-version: 6.2
import PackageDescription

let package = Package(
    name: "rootfs",
    platforms: [.macOS(.v15)],
    products: [
        .executable(name: "rootfs", targets: ["rootfs"]),
        .executable(name: "rootfs-agent", targets: ["rootfs-agent"]),
        .executable(name: "rootfs-fuzz", targets: ["rootfs-fuzz"]),
        .library(name: "RootfsKit", targets: ["RootfsKit", "RootfsImage", "RootfsSupport"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-argument-parser.git", from: "1.8.2"),
        .package(url: "https://github.com/swiftlang/swift-subprocess.git", from: "1.0.2"),
        // rootfs.toml (RootfsKit/Config/): a kept TOML library (toml++ underneath), no parser of our own.
        .package(url: "https://github.com/LebJe/TOMLKit", from: "0.6.0"),
    ],
    targets: [
        // libarchive, found through pkg-config (apt: libarchive-dev), with zstd and zlib used directly.
        .systemLibrary(
            name: "CArchive",
            pkgConfig: "libarchive",
            providers: [.apt(["libarchive-dev", "libzstd-dev", "zlib1g-dev"])]
        ),
        // libdeflate (apt: libdeflate-dev): the parallel gzip initrd's deflate, 3-4x zlib's speed.
        .systemLibrary(
            name: "CDeflate",
            pkgConfig: "libdeflate",
            providers: [.apt(["libdeflate-dev"])]
        ),
        // Everything real: distro discovery, the build, the image writer.
        // The host/agent protocol: pure Swift, shared by RootfsKit and the agent.
        .target(name: "AgentProtocol"),
        // reboot(2) for the agent: <sys/reboot.h> is not in Swift's Glibc module.
        .target(name: "CAgentSupport"),
        // The floors, bottom up. Each target sees only the ones below it, so an
        // arrow back up (a writer naming a build type) does not compile.
        // Support: errors, processes, files and descriptors, bytes, digests, guest paths.
        .target(
            name: "RootfsSupport",
            dependencies: [
                .product(name: "Subprocess", package: "swift-subprocess"),
            ],
            // The digests are hot paths: optimized even in debug builds.
            swiftSettings: [.unsafeFlags(["-O"])]
        ),
        // Trees and images: the libarchive wrapper, tree sources, ext4, partitions, every writer.
        .target(
            name: "RootfsImage",
            dependencies: ["RootfsSupport", "CArchive", "CDeflate"],
            // The image writers are hot paths and the tests run them on real trees.
            swiftSettings: [.unsafeFlags(["-O"])]
        ),
        // rootfs.toml's parser: TOMLKit behind an internal import, so its extensions of String,
        // Array and Dictionary stay out of RootfsKit (RootfsKit/Config/ uses it).
        .target(
            name: "RootfsTOML",
            dependencies: [.product(name: "TOMLKit", package: "TOMLKit")]
        ),
        // Distros, the build, containers, the manifest, boot: everything that decides what to write.
        .target(
            name: "RootfsKit",
            dependencies: [
                "AgentProtocol",
                "RootfsSupport",
                "RootfsImage",
                "RootfsTOML",
            ],
            swiftSettings: [.unsafeFlags(["-O"])]
        ),
        // The thin command-line front end: one file per subcommand.
        .executableTarget(
            name: "rootfs",
            dependencies: [
                "RootfsKit",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
            ]
        ),
        // The reference guest agent. It runs inside guests whatever their libc,
        // so it is linked fully static and uses nothing but the C library.
        .executableTarget(
            name: "rootfs-agent",
            dependencies: ["AgentProtocol", "CAgentSupport"],
            linkerSettings: [.unsafeFlags(["-static-executable"])]
        ),
        // The parsers that read strangers' bytes, as libFuzzer harnesses (built with
        // --sanitize=fuzzer -Xswiftc -DFUZZING) or as a corpus replayer (a plain build):
        // docs/FUZZING.md.
        .executableTarget(
            name: "rootfs-fuzz",
            dependencies: ["RootfsKit", "AgentProtocol"]
        ),
        // `swift package --allow-writing-to-package-directory rootfs ARGS`: the package's
        // own rootfs, from a checkout, with its output and exit status (docs/CLI.md).
        .plugin(
            name: "RootfsPlugin",
            capability: .command(
                intent: .custom(verb: "rootfs", description: "Run this checkout's rootfs (build, list, new, boot...) with the given arguments."),
                permissions: [
                    .writeToPackageDirectory(reason: "rootfs writes its outputs under build/ and new distros under distros/ in the package directory.")
                ]
            )
        ),
        .testTarget(
            name: "RootfsKitTests",
            dependencies: ["RootfsKit", "RootfsImage", "RootfsSupport", "CArchive", "AgentProtocol"]
        ),
    ],
    swiftLanguageModes: [.v6]
)
