import Foundation
import Testing
@testable import RootfsKit
@testable import RootfsImage
@testable import RootfsSupport

/// `rootfs build --from-image`: a guest made from a container image instead of a
/// distro hook, with the agent, the build record, the manifest and the outputs of
/// any build, proven by booting it.
@Suite(.serialized, .requires(.root, .network, .docker, .qemu, .busybox), .tags(.root, .network, .docker, .qemu, .busybox))
struct FromImageTests {
    @Test func aDebianImageFromDockerBootsAndAnswers() async throws {
        // debian:trixie in Docker's store, made by `rootfs builder seed` (no registry here).
        try await ContainerTrees.shared.seedBaseImage(.docker)
        let work = try Fixtures.temporaryDirectory("from-image"); defer { FS.remove(work) }
        let scratch = work + "/tmp"
        try FS.makeDirectories(scratch)
        let build = try await Fixtures.rootfs(["build", "--from-image", "docker://debian:trixie", "--format", "initrd", "-O", work + "/out"],
                                              environment: ["SOURCE_DATE_EPOCH": "1700000000", "TMPDIR": scratch], workingDirectory: work)
        #expect(build.status == 0, "\(build.stderr.suffix(3000))")
        #expect(build.stderr.contains("image: docker://debian:trixie"), "\(build.stderr.suffix(2000))")
        #expect(!build.stderr.contains("build_rootfs:"), "a hook ran")
        #expect(try FileManager.default.contentsOfDirectory(atPath: scratch).isEmpty, "the saved image was left behind")
        let initrd = work + "/out/debian-trixie.initrd"
        // The packages come from the image's own dpkg database.
        let manifest = try String(contentsOfFile: work + "/out/debian-trixie.manifest.json", encoding: .utf8)
        #expect(manifest.contains("\"base-files\""), "\(manifest.prefix(2000))")
        let entries = Set(try ArchiveReader.list(initrd).map(\.path))
        #expect(entries.contains("usr/bin/rootfs-agent") && entries.contains("var/lib/osbuilder/osbuilder.yaml") && entries.contains("etc/debian_version"))

        let kernel = try await BootFixture.kernel(packageRoot: URL(fileURLWithPath: Fixtures.repositoryRoot))
        let boot = try await Fixtures.rootfs(["boot", initrd, "--kernel", kernel, "--accel", "tcg", "--timeout", "240",
                                              "--", "sh", "-c", "cat /etc/debian_version; test -x /sbin/init && exit 7"])
        #expect(boot.status == 7, "\(boot.stdout)\(boot.stderr.suffix(2000))")
        // The guest's Debian is the image's, as the engine itself shows it.
        let version = try await OCIFixtures.run("docker", ["run", "--rm", "--network", "none", "debian:trixie", "cat", "/etc/debian_version"])
        #expect(!version.isEmpty && boot.stdout.contains(version.trimmingCharacters(in: .whitespacesAndNewlines)), "\(boot.stdout)")
    }

    @Test func aTreeThatIsNoImageAndNoDistroAreRefused() async throws {
        let work = try Fixtures.temporaryDirectory("from-image-bad"); defer { FS.remove(work) }
        let none = try await Fixtures.rootfs(["build", "--dry-run"], workingDirectory: work)
        #expect(none.status != 0)
        #expect(none.stderr.contains("--from-image"), "\(none.stderr)")
        let directory = try await Fixtures.rootfs(["build", "--from-image", work, "--dry-run"], workingDirectory: work)
        #expect(directory.status != 0)
        #expect(directory.stderr.contains("is not a container image") && directory.stderr.contains("rootfs image"), "\(directory.stderr)")
        let option = try await Fixtures.rootfs(["build", "--from-image", "docker://--help", "--dry-run"], workingDirectory: work)
        #expect(option.status != 0)
        #expect(option.stderr.contains("is not an image name"), "\(option.stderr)")
        #expect(!FS.exists(work + "/build"))
    }
}
