import Foundation
import Testing
@testable import RootfsKit
@testable import RootfsImage
@testable import RootfsSupport

/// `docker://NAME` and `podman://NAME` as TREEs: the engine saves the image, rootfs
/// reads its layers in process. Judged against umoci's unpack of the same image
/// (copied out by skopeo), never against rootfs's own reading of it.
@Suite(.serialized, .requires(.root, .docker, .podman, .busybox), .tags(.root, .docker, .podman, .busybox))
struct EngineImageTests {
    /// A two-layer image with a whiteout and new owners, built by `engine` from a busybox tree.
    static func buildImage(_ engine: String, name: String, in work: String) async throws {
        try OCIFixtures.busyboxTree(at: work + "/base")
        try FS.makeDirectories(work + "/context")
        try await OCIFixtures.run("tar", ["-C", work + "/base", "--numeric-owner", "--owner=0", "--group=0", "-cf", work + "/context/base.tar", "."])
        let dockerfile = """
            FROM scratch
            ADD base.tar /
            RUN rm /etc/gone && mkdir -p /srv && echo engine > /srv/made && chown 7:8 /srv/made
            """
        try dockerfile.write(toFile: work + "/context/Dockerfile", atomically: false, encoding: .utf8)
        try await OCIFixtures.run(engine, ["build", "-q", "--network", "none", "-t", name, work + "/context"])
    }

    @Test func dockerImageGivesUmocisTree() async throws {
        let work = try Fixtures.temporaryDirectory("engine-docker"); defer { FS.remove(work) }
        let name = "rootfs-engine-test:\(getpid())"
        try await Self.buildImage("docker", name: name, in: work)
        defer { _ = Fixtures.status("/usr/bin/env", ["docker", "rmi", "-f", name]) }
        try await OCIFixtures.run("skopeo", ["copy", "-q", "docker-daemon:" + name, "oci:" + work + "/layout:t"])
        try await OCIFixtures.run("umoci", ["unpack", "--image", work + "/layout:t", work + "/bundle"])
        // The saved archive goes to TMPDIR; it must be gone when the command ends.
        let scratch = work + "/tmp"
        try FS.makeDirectories(scratch)

        let diff = try await Fixtures.rootfs(["diff", "docker://" + name, work + "/bundle/rootfs"], environment: ["TMPDIR": scratch])
        #expect(diff.status == 0, "\(diff.stdout)\(diff.stderr)")
        let tar = try await Fixtures.rootfs(["image", "docker://" + name, "--format", "tar", "-o", work + "/out.tar"],
                                            environment: ["TMPDIR": scratch])
        #expect(tar.status == 0, "\(tar.stderr)")
        let entries = Dictionary(uniqueKeysWithValues: try ArchiveReader.list(work + "/out.tar").map { ($0.path, $0) })
        #expect(entries["srv/made"].map { "\($0.uid):\($0.gid)" } == "7:8")
        #expect(entries["etc/gone"] == nil && entries["etc/keep"] != nil)
        #expect(try FileManager.default.contentsOfDirectory(atPath: scratch).isEmpty, "the saved image was left behind")

        // As an overlay: the image's files over a plain tar.
        try FS.makeDirectories(work + "/plain/etc")
        try "plain\n".write(toFile: work + "/plain/etc/plain", atomically: false, encoding: .utf8)
        try await OCIFixtures.run("tar", ["-C", work + "/plain", "-cf", work + "/plain.tar", "."])
        let layered = try await Fixtures.rootfs(["extend", work + "/plain.tar", "--overlay", "docker://" + name,
                                                 "-o", work + "/layered.tar"], environment: ["TMPDIR": scratch])
        #expect(layered.status == 0, "\(layered.stderr)")
        let paths = Set(try ArchiveReader.list(work + "/layered.tar").map(\.path))
        #expect(paths.contains("etc/plain") && paths.contains("srv/made") && paths.contains("bin/busybox"), "\(paths.sorted())")
        #expect(try FileManager.default.contentsOfDirectory(atPath: scratch).isEmpty)
    }

    @Test func podmanImageGivesUmocisTree() async throws {
        let work = try Fixtures.temporaryDirectory("engine-podman"); defer { FS.remove(work) }
        let name = "localhost/rootfs-engine-test:\(getpid())"
        try await Self.buildImage("podman", name: name, in: work)
        defer { _ = Fixtures.status("/usr/bin/env", ["podman", "rmi", "-f", name]) }
        try await OCIFixtures.run("skopeo", ["copy", "-q", "containers-storage:" + name, "oci:" + work + "/oci:t"])
        try await OCIFixtures.run("umoci", ["unpack", "--image", work + "/oci:t", work + "/bundle"])
        let diff = try await Fixtures.rootfs(["diff", "podman://" + name, work + "/bundle/rootfs"])
        #expect(diff.status == 0, "\(diff.stdout)\(diff.stderr)")
    }

    @Test func badNamesAndMissingImagesAreClearErrors() async throws {
        let work = try Fixtures.temporaryDirectory("engine-bad"); defer { FS.remove(work) }
        let canary = work + "/canary"
        try "x".write(toFile: canary, atomically: false, encoding: .utf8)
        // A name that an engine would read as an option never reaches it.
        for bad in ["docker://-o" + canary, "docker://", "podman://a b", "docker://x\n--help"] {
            let result = try await Fixtures.rootfs(["size", bad])
            #expect(result.status != 0)
            #expect(result.stderr.contains("image name") || result.stderr.contains("names no image"), "\(bad): \(result.stderr)")
        }
        #expect(try String(contentsOfFile: canary, encoding: .utf8) == "x")
        let scratch = work + "/tmp"
        try FS.makeDirectories(scratch)
        let missing = try await Fixtures.rootfs(["size", "docker://rootfs-no-such-image:\(getpid())"], environment: ["TMPDIR": scratch])
        #expect(missing.status != 0)
        #expect(missing.stderr.contains("could not save the image") && missing.stderr.contains("docker images"), "\(missing.stderr)")
        #expect(try FileManager.default.contentsOfDirectory(atPath: scratch).isEmpty)
    }
}
