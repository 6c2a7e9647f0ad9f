import Foundation
import Testing
@testable import RootfsKit
@testable import RootfsImage
@testable import RootfsSupport

/// An aarch64 Debian guest built on this (x86_64) host and booted under
/// qemu-system-aarch64 (TCG): mmdebstrap --architectures=arm64 through qemu-user, the
/// reference agent built for aarch64 by scripts/build-agent.sh, Debian's arm64 cloud
/// kernel from scripts/fetch-test-kernel.sh --arch aarch64. Built once (about 3 min
/// here), shared by the tests.
@Suite(.serialized, .requires(.root, .network, .foreignArch, .swiftpm), .tags(.root, .network, .qemu, .foreignArch))
struct AArch64TestsRequiringQEMU {
    @Test func theInitrdBootsAndTheGuestIsAArch64() async throws {
        let fixture = try await AArch64Fixture.shared.prepare()
        // The image says what it is: no --arch, the ELF machine of its init picks the machine.
        let r = try await Fixtures.rootfs(["boot", fixture.initrd, "--kernel", fixture.kernel, "--timeout", "300",
                                           "--", "uname", "-m"])
        #expect(r.status == 0, "\(r.stderr)")
        #expect(r.stdout == "aarch64\n", "\(r.stdout)")
        #expect(r.stderr.contains("qemu-system-aarch64"), "\(r.stderr)")
    }

    @Test func theExitStatusComesBack() async throws {
        let fixture = try await AArch64Fixture.shared.prepare()
        let r = try await Fixtures.rootfs(["boot", fixture.initrd, "--kernel", fixture.kernel, "--arch", "aarch64",
                                           "--timeout", "300", "--", "sh", "-c", "echo from-arm; exit 7"])
        #expect(r.status == 7, "\(r.stderr)")
        #expect(r.stdout == "from-arm\n")
    }

    @Test func theTreesProgramsAreAArch64() async throws {
        let fixture = try await AArch64Fixture.shared.prepare()
        let dir = fixture.tree + "/usr/bin"
        var elf = 0
        var wrong: [String] = []
        for name in try FileManager.default.contentsOfDirectory(atPath: dir) {
            let path = dir + "/" + name
            // lstat: a link (awk -> /etc/alternatives/awk) would be followed on the host, not in the guest.
            var info = stat()
            guard lstat(path, &info) == 0, (info.st_mode & S_IFMT) == S_IFREG, let machine = ELF.machine(path) else { continue }  // scripts
            elf += 1
            if machine != Architecture.aarch64.elfMachine { wrong.append("\(name): \(ELF.machineName(machine))") }
        }
        #expect(elf > 50, "only \(elf) ELF files in /usr/bin")
        #expect(wrong.isEmpty, "\(wrong)")
        // The build says so: the record and the manifest.
        let record = try String(contentsOfFile: fixture.tree + "/var/lib/osbuilder/osbuilder.yaml", encoding: .utf8)
        #expect(record.contains("architecture: \"aarch64\""), "\(record)")
        let manifest = try String(contentsOfFile: fixture.initrd.replacingOccurrences(of: ".initrd", with: ".manifest.json"), encoding: .utf8)
        #expect(manifest.contains("\"architecture\" : \"aarch64\""), "\(manifest.prefix(600))")
    }

    @Test func aSystemdDiskImageBoots() async throws {
        let fixture = try await AArch64Fixture.shared.prepare()
        let disk = try await AArch64Fixture.shared.systemdDisk()
        // No --arch: the ELF machine of the disk's /sbin/init (systemd, read from its ext4 partition) picks the machine.
        let r = try await Fixtures.rootfs(["boot", disk, "--kernel", fixture.kernel, "--timeout", "400",
                                           "--", "sh", "-c", "uname -m; cat /proc/1/comm; exit 7"])
        #expect(r.status == 7, "\(r.stderr)")
        #expect(r.stdout == "aarch64\nsystemd\n", "\(r.stdout)")
        #expect(r.stderr.contains("qemu-system-aarch64"), "\(r.stderr)")
        // An --arch the content contradicts is refused before QEMU starts, naming both.
        let x86 = try await BootFixture.kernel(packageRoot: URL(fileURLWithPath: Fixtures.repositoryRoot))
        let wrong = try await Fixtures.rootfs(["boot", disk, "--kernel", x86, "--arch", "x86_64", "--", "true"])
        #expect(wrong.status != 0)
        #expect(wrong.stderr.contains("--arch x86_64 disagrees with \(disk): its init is an aarch64 ELF file"), "\(wrong.stderr)")
    }

    @Test func aKernelOfAnotherArchitectureIsRefused() async throws {
        let fixture = try await AArch64Fixture.shared.prepare()
        let x86 = try await BootFixture.kernel(packageRoot: URL(fileURLWithPath: Fixtures.repositoryRoot))
        let r = try await Fixtures.rootfs(["boot", fixture.initrd, "--kernel", x86, "--", "true"])
        #expect(r.status != 0)
        #expect(r.stderr.contains("is for x86_64, but the image is for aarch64"), "\(r.stderr)")
        let none = try await Fixtures.rootfs(["boot", fixture.initrd, "--", "true"])
        #expect(none.status != 0)
        #expect(none.stderr.contains("fetch-test-kernel.sh --arch aarch64"), "\(none.stderr)")
    }
}

/// The aarch64 guest, built at most once per test process.
actor AArch64Fixture {
    static let shared = AArch64Fixture()
    struct Prepared: Sendable { var kernel: String; var initrd: String; var tree: String }
    private var task: Task<Prepared, any Error>?

    private var diskTask: Task<String, any Error>?

    /// A systemd guest on a raw disk (the default outputs' image), built on first use.
    func systemdDisk() async throws -> String {
        if let diskTask { return try await diskTask.value }
        let started = Task {
            let work = try Fixtures.temporaryDirectory("aarch64-disk")
            DebianTrees.removeAtExit(work)
            let image = work + "/debian-arm64.img"
            let r = try await Fixtures.rootfs(["build", "debian", "--arch", "aarch64", "--image", image], workingDirectory: work)
            guard r.status == 0 else { throw RootfsError("rootfs build debian --arch aarch64 --image failed", details: [r.stderr]) }
            return image
        }
        diskTask = started
        return try await started.value
    }

    func prepare() async throws -> Prepared {
        if let task { return try await task.value }
        let started = Task { try await Self.build() }
        task = started
        return try await started.value
    }

    static func build() async throws -> Prepared {
        let root = Fixtures.repositoryRoot
        // The reference agent for aarch64, next to rootfs where `rootfs build` looks for it.
        _ = try await ProcessRunner().capture(ToolCommand(root + "/scripts/build-agent.sh",
                                                          ["--arch", "aarch64", "--out", Fixtures.productsDirectory]))
        let fetched = try await ProcessRunner().capture(ToolCommand(root + "/scripts/fetch-test-kernel.sh",
                                                                    ["--arch", "aarch64", root + "/.build-kernel-aarch64"]))
        guard let kernel = fetched.standardOutput.split(separator: "\n").last.map(String.init) else {
            throw RootfsError("fetch-test-kernel.sh --arch aarch64 printed no kernel")
        }
        let work = try Fixtures.temporaryDirectory("aarch64")
        DebianTrees.removeAtExit(work)
        let initrd = work + "/debian-arm64.initrd"
        let tree = work + "/rootfs"
        let r = try await Fixtures.rootfs(["build", "debian", "--arch", "aarch64", "--agent-init", "--initrd", initrd,
                                           "-r", tree], workingDirectory: work)
        guard r.status == 0 else { throw RootfsError("rootfs build debian --arch aarch64 failed", details: [r.stderr]) }
        return Prepared(kernel: kernel, initrd: initrd, tree: tree)
    }
}
