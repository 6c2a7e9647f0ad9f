import Foundation
import Testing
@testable import RootfsKit
@testable import RootfsSupport

/// The package inventory streams dpkg's status file: a huge one (600 MiB, sparse, one
/// endless line before a real paragraph) is read in bounded memory and the package found.
@Suite struct PackageInventoryStreamTests {
    @Test func aHugeStatusFileIsReadInBoundedMemory() async throws {
        let dir = try Fixtures.temporaryDirectory("hugestatus"); defer { FS.remove(dir) }
        let tree = dir + "/tree"
        try FS.makeDirectories(tree + "/var/lib/dpkg")
        let status = tree + "/var/lib/dpkg/status"
        let paragraph = Array("\nPackage: survivor\nStatus: install ok installed\nVersion: 1.2\nArchitecture: amd64\nInstalled-Size: 4\n\n".utf8)
        let fd = open(status, O_WRONLY | O_CREAT | O_EXCL, 0o644)
        #expect(fd >= 0)
        let hole: off_t = 600 << 20
        #expect(ftruncate(fd, hole) == 0)
        #expect(pwrite(fd, paragraph, paragraph.count, hole) == paragraph.count)
        close(fd)
        // Python measures the peak resident memory of its child, rootfs size --json.
        let script = "import resource,subprocess,sys\nr=subprocess.run(sys.argv[1:],capture_output=True)\nsys.stdout.write(r.stdout.decode())\nprint('MAXRSS', resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)\nsys.exit(r.returncode)"
        let result = try await Fixtures.run("/usr/bin/python3", ["-c", script, Fixtures.rootfsBinary, "size", tree, "--json"])
        #expect(result.status == 0, "\(result.stderr)")
        #expect(result.stdout.contains("survivor"), "\(result.stdout.prefix(2000))")
        let kib = result.stdout.split(separator: "\n").last { $0.hasPrefix("MAXRSS ") }.flatMap { Int($0.dropFirst(7)) } ?? .max
        #expect(kib < 200 << 10, "peak RSS \(kib) KiB for a 600 MiB status file")
    }

    @Test func aTarsHugeStatusFileIsRefusedBeforeItIsRead() async throws {
        let dir = try Fixtures.temporaryDirectory("hugestatus-tar"); defer { FS.remove(dir) }
        let tree = dir + "/tree"
        try FS.makeDirectories(tree + "/var/lib/dpkg")
        let fd = open(tree + "/var/lib/dpkg/status", O_WRONLY | O_CREAT | O_EXCL, 0o644)
        #expect(fd >= 0)
        #expect(ftruncate(fd, 600 << 20) == 0)
        close(fd)
        // Zeros compress: the tar.gz is small, its status member 600 MiB.
        try await ProcessRunner().capture(ToolCommand("tar", ["-C", tree, "-czf", dir + "/huge.tar.gz", "."]))
        let script = "import resource,subprocess,sys\nr=subprocess.run(sys.argv[1:],capture_output=True)\nsys.stderr.write(r.stderr.decode())\nprint('MAXRSS', resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)\nsys.exit(r.returncode)"
        let result = try await Fixtures.run("/usr/bin/python3", ["-c", script, Fixtures.rootfsBinary, "size", dir + "/huge.tar.gz"])
        #expect(result.status != 0)
        #expect(result.stderr.contains("/var/lib/dpkg/status is 629145600 bytes"), "\(result.stderr)")
        let kib = result.stdout.split(separator: "\n").last { $0.hasPrefix("MAXRSS ") }.flatMap { Int($0.dropFirst(7)) } ?? .max
        #expect(kib < 200 << 10, "peak RSS \(kib) KiB")
    }
}
