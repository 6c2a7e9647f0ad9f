import Foundation
import Testing
@testable import RootfsKit
@testable import RootfsImage
@testable import RootfsSupport

/// `rootfs builder seed` runs the build's hook stage (issue 12): the same confinement as
/// `rootfs build`, on the busybox test distro imported into the real Docker.
@Suite(.serialized, .requires(.docker, .busybox), .tags(.docker, .busybox)) struct SeedStageTestsRequiringDocker {
    @Test func seedImportsTheHookTreeAndRefusesAHookThatWritesOutside() async throws {
        let escaping = TestDistros.busyboxLib.replacingOccurrences(
            of: "local root=$1", with: "local root=$1\n    touch \"$root/../escape\"")
        let distros = try TestDistros.make(["bb": (TestDistros.busyboxConfig, TestDistros.busyboxLib),
                                            "bbescape": (TestDistros.busyboxConfig, escaping)])
        let dir = try Fixtures.temporaryDirectory("seed-stage")
        defer { FS.remove(distros); FS.remove(dir) }
        let tag = "rootfs-seed-stage-test:\(getpid())"

        let r = try await Fixtures.rootfs(["builder", "seed", "bb", "--engine", "docker", "--distros-dir", distros,
                                           "--tag", tag, "--build-dir", dir + "/build"])
        #expect(r.status == 0, "\(r.stderr)")
        let listing = try await Fixtures.run("/usr/local/bin/docker", ["run", "--rm", "--network", "none", tag, "/bin/busybox", "ls", "/bin"])
        #expect(listing.status == 0, "\(listing.stderr)")
        #expect(listing.stdout.contains("busybox") && listing.stdout.contains("sh"), "\(listing.stdout)")
        // Nothing of the hook's work directory is left behind.
        let left = try FileManager.default.contentsOfDirectory(atPath: dir + "/build").filter { $0.hasPrefix(".") }
        #expect(left.isEmpty, "\(left)")

        // A hook that writes next to its tree is refused, as in a build (the old seed imported it).
        let bad = try await Fixtures.rootfs(["builder", "seed", "bbescape", "--engine", "docker", "--distros-dir", distros,
                                             "--tag", tag + "-bad", "--build-dir", dir + "/build"])
        #expect(bad.status != 0)
        #expect(bad.stderr.contains("wrote outside its rootfs directory"), "\(bad.stderr)")
        let inspect = try await Fixtures.run("/usr/local/bin/docker", ["image", "inspect", tag + "-bad"])
        #expect(inspect.status != 0, "no image was imported")
        _ = try await Fixtures.run("/usr/local/bin/docker", ["image", "rm", "-f", tag])
    }
}
