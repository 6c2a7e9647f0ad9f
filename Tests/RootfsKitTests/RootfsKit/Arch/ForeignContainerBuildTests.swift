import Foundation
import Testing
@testable import RootfsKit
@testable import RootfsImage
@testable import RootfsSupport

/// `--arch aarch64` with a builder container: the engine builds and runs the builder for
/// linux/arm64 (--platform), its binaries through the host's qemu-user binfmt entry. No
/// registry is reachable, so the arm64 base image is made from the aarch64 tree the AArch64
/// suite builds anyway (no second foreign bootstrap). The hook copies the container's own
/// programs into the tree and records the container's `uname -m`: the tree is aarch64 only if
/// the container was.
@Suite(.serialized, .requires(.root, .network, .foreignArch, .swiftpm), .tags(.root, .network, .foreignArch))
struct ForeignContainerBuildTests {
    static let baseTag = "rootfs-test-arm64-base:trixie"

    /// A distro whose build_rootfs copies the builder container's programs.
    static func copyingDistro() throws -> String {
        try makeDistro(named: "arm64copy", dockerfile: "FROM debian:@OS_VERSION@\n", library: """
            build_rootfs() {
                local root=$1
                uname -m > "$root/builder-uname-m"
                for d in etc usr/bin usr/sbin usr/lib; do mkdir -p "$root/$d"; cp -a "/$d/." "$root/$d/"; done
                for l in bin sbin lib; do ln -s "usr/$l" "$root/$l"; done
            }
            """)
    }

    func build(_ kind: ContainerEngine.Kind) async throws {
        _ = try await AArch64Fixture.shared.prepare()
        let base = try await ForeignBaseImage.shared.image(kind)
        let distros = try Self.copyingDistro()
        let dir = try Fixtures.temporaryDirectory("foreign-\(kind.rawValue)")
        defer { FS.remove(distros); FS.remove(dir) }
        let r = try await Fixtures.rootfs(["build", "--distros-dir", distros, "arm64copy", "--engine", kind.rawValue,
                                           "--arch", "aarch64", "--builder-base", base, "--agent-init", "--no-cache",
                                           "-r", dir + "/rootfs"], workingDirectory: dir)
        #expect(r.status == 0, "\(r.stderr.suffix(3000))")
        #expect(r.stderr.contains("rootfs-builder-arm64copy:trixie-arm64-"), "\(r.stderr.suffix(2000))")
        let uname = try String(contentsOfFile: dir + "/rootfs/builder-uname-m", encoding: .utf8)
        #expect(uname == "aarch64\n", "the builder container ran as \(uname)")
        var elf = 0
        var wrong: [String] = []
        for name in try FileManager.default.contentsOfDirectory(atPath: dir + "/rootfs/usr/bin") {
            let path = dir + "/rootfs/usr/bin/" + name
            var info = stat()
            guard lstat(path, &info) == 0, (info.st_mode & S_IFMT) == S_IFREG, let machine = ELF.machine(path) else { continue }
            elf += 1
            if machine != Architecture.aarch64.elfMachine { wrong.append("\(name): \(ELF.machineName(machine))") }
        }
        #expect(elf > 50, "only \(elf) ELF files in /usr/bin")
        #expect(wrong.isEmpty, "\(wrong)")
    }

    @Test(.requires(.docker)) func dockerRunsTheBuilderAsArm64() async throws { try await build(.docker) }

    @Test(.requires(.podman)) func podmanRunsTheBuilderAsArm64() async throws { try await build(.podman) }

    /// An amd64 base for an aarch64 build: Docker builds it quietly as amd64 (its classic builder
    /// ignores --platform for a local base), Podman fails to find an arm64 one; both are refused
    /// naming both platforms, never an amd64 tree under an aarch64 name.
    @Test(.requires(.docker, .podman)) func anAmd64BaseIsRefusedNamingBothPlatforms() async throws {
        _ = try await AArch64Fixture.shared.prepare()  // the aarch64 agent
        let distros = try Self.copyingDistro()
        defer { FS.remove(distros) }
        for kind in ContainerEngine.Kind.allCases {
            try await ContainerTrees.shared.seedBaseImage(kind)  // debian:trixie, this host's amd64
            let dir = try Fixtures.temporaryDirectory("foreign-bad-\(kind.rawValue)")
            defer { FS.remove(dir) }
            let r = try await Fixtures.rootfs(["build", "--distros-dir", distros, "arm64copy", "--engine", kind.rawValue,
                                               "--arch", "aarch64", "--agent-init", "--no-cache", "-r", dir + "/rootfs"],
                                              workingDirectory: dir)
            #expect(r.status == 1, "\(kind): \(r.stderr.suffix(2000))")
            #expect(r.stderr.contains("\(kind.displayName) cannot run the builder for linux/arm64"), "\(r.stderr.suffix(2000))")
            #expect(r.stderr.contains("is a linux/amd64 image"), "\(r.stderr.suffix(2000))")
            #expect(!FS.exists(dir + "/rootfs"))
        }
    }
}

/// The arm64 base image in each engine's store, from the AArch64 suite's tree: Podman imports
/// the tar with --arch; Docker 20.10 ignores `import --platform`, so it builds FROM scratch
/// with --platform, which records the platform.
actor ForeignBaseImage {
    static let shared = ForeignBaseImage()
    private var images: [ContainerEngine.Kind: Task<String, any Error>] = [:]

    func image(_ kind: ContainerEngine.Kind) async throws -> String {
        if let task = images[kind] { return try await task.value }
        let task = Task<String, any Error> {
            let tree = try await AArch64Fixture.shared.prepare().tree
            // The tar (about 200 MB) lives only until the engine has the image.
            let dir = try Fixtures.temporaryDirectory("arm64-base")
            defer { FS.remove(dir) }
            _ = try await ProcessRunner().capture(ToolCommand("tar", ["--numeric-owner", "-C", tree, "-cf", dir + "/rootfs.tar", "."]))
            switch kind {
            case .docker:
                try "FROM scratch\nADD rootfs.tar /\n".write(toFile: dir + "/Dockerfile", atomically: true, encoding: .utf8)
                _ = try await ProcessRunner().capture(ToolCommand("docker", ["build", "--platform", "linux/arm64", "-t", Self.tag, dir],
                                                                  environment: ["DOCKER_BUILDKIT": "0"]))
            case .podman:
                _ = try await ProcessRunner().capture(ToolCommand("podman", ["import", "--os", "linux", "--arch", "arm64",
                                                                             dir + "/rootfs.tar", Self.tag]))
            }
            let platform = try await runEngine(kind, ["image", "inspect", "--format", "{{.Os}}/{{.Architecture}}", Self.tag])
            guard platform.trimmingCharacters(in: .whitespacesAndNewlines) == "linux/arm64" else {
                throw RootfsError("\(kind.rawValue) recorded \(Self.tag) as \(platform), not linux/arm64")
            }
            return Self.tag
        }
        images[kind] = task
        return try await task.value
    }

    static var tag: String { ForeignContainerBuildTests.baseTag }
}
