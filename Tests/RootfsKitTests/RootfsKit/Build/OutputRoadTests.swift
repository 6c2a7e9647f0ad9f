import Foundation
import Testing
@testable import RootfsKit
@testable import RootfsImage
@testable import RootfsSupport

/// One road for outputs (issue 12): `--initrd`, `--image` and `--format` are written,
/// digested and listed the same way, through the real CLI on the busybox test distro.
@Suite(.requires(.busybox, .root), .tags(.busybox, .root)) struct OutputRoadTestsRequiringBusybox {
    /// `--image --partition-table gpt` writes a GPT disk (it wrote an MBR one: only the free
    /// space, the epoch and the ext4 writer reached the disk writer), and the dry run says so.
    @Test func imageTakesEveryImageOption() async throws {
        let distros = try busyboxDistros()
        let dir = try Fixtures.temporaryDirectory("gpt-image")
        defer { FS.remove(distros); FS.remove(dir) }
        let args = ["build", "bb", "--distros-dir", distros, "--image", dir + "/bb.img", "--partition-table", "gpt"]
        let dry = try await Fixtures.rootfs(args + ["--dry-run"], workingDirectory: dir)
        #expect(dry.status == 0, "\(dry.stderr)")
        #expect(dry.stdout.contains("image: \(dir)/bb.img (raw, GPT, ext4"), "\(dry.stdout)")

        let r = try await Fixtures.rootfs(args, workingDirectory: dir)
        #expect(r.status == 0, "\(r.stderr)")
        let sgdisk = try await Fixtures.run("/usr/sbin/sgdisk", ["-p", dir + "/bb.img"])
        #expect(sgdisk.status == 0, "\(sgdisk.stderr)")
        // An MBR disk would be "converted to GPT in memory", its partition unnamed; ours is named after the label.
        #expect(!(sgdisk.stdout + sgdisk.stderr).contains("MBR"), "\(sgdisk.stdout)\(sgdisk.stderr)")
        #expect(sgdisk.stdout.contains("8300  rootfs"), "one Linux partition named rootfs: \(sgdisk.stdout)")
        let fdisk = try await Fixtures.run("/usr/sbin/fdisk", ["-l", dir + "/bb.img"])
        #expect(fdisk.stdout.contains("Disklabel type: gpt"), "\(fdisk.stdout)")
        // The file system in the partition is whole (a second tool reads it).
        let fsck = try await Fixtures.run("/usr/sbin/e2fsck", ["-fn", dir + "/bb.img?offset=1048576"])
        #expect(fsck.status == 0, "\(fsck.stdout)\(fsck.stderr)")

        // --fs erofs reaches --image too: the partition holds an erofs super block (magic at 1024).
        let erofs = try await Fixtures.rootfs(["build", "bb", "--distros-dir", distros, "--image", dir + "/e.img",
                                               "--fs", "erofs", "--no-manifest"], workingDirectory: dir)
        #expect(erofs.status == 0, "\(erofs.stderr)")
        let handle = try FileHandle(forReadingFrom: URL(fileURLWithPath: dir + "/e.img"))
        defer { try? handle.close() }
        try handle.seek(toOffset: (1 << 20) + 1024)
        #expect(try handle.read(upToCount: 4).map(Array.init) == [0xe2, 0xe1, 0xf5, 0xe0])
    }

    /// `--format` outputs carry a sha256 in the summary, `--json` and the manifest (they had
    /// none), and the manifest goes next to them in `-O DIR` (it went to build/<distro>/rootfs.manifest.json).
    @Test func formatOutputsAreDigestedAndTheManifestSitsNextToThem() async throws {
        let distros = try busyboxDistros()
        let dir = try Fixtures.temporaryDirectory("format-digests")
        defer { FS.remove(distros); FS.remove(dir) }
        let out = dir + "/out"
        try FS.makeDirectories(out)
        let r = try await Fixtures.rootfs(["build", "bb", "--distros-dir", distros, "--format", "tar.gz",
                                           "--format", "initrd", "--format", "raw", "-O", out, "--json"],
                                          workingDirectory: dir)
        #expect(r.status == 0, "\(r.stderr)")
        let files = [out + "/bb.tar.gz", out + "/bb.initrd", out + "/bb.img"]
        var digests: [String: String] = [:]
        for file in files { digests[file] = try await sha256sum(file) }

        let doc = try jsonObject(r.stdout)
        let outputs = try #require(doc["outputs"] as? [[String: Any]])
        #expect(outputs.compactMap { $0["kind"] as? String } == ["tar.gz", "initrd", "raw", "manifest"])
        for file in files {
            let entry = try #require(outputs.first { $0["path"] as? String == file }, "\(file) in --json")
            #expect(entry["sha256"] as? String == digests[file], "\(file)")
            // The summary on stderr names the same digest.
            #expect(r.stderr.contains("\(file)  ") && r.stderr.contains("sha256:" + digests[file]!), "\(r.stderr)")
        }

        #expect(FS.isRegularFile(out + "/bb.manifest.json"))
        #expect(!FS.exists(dir + "/build/bb/rootfs.manifest.json"))
        let manifest = try jsonObject(String(decoding: try Data(contentsOf: URL(fileURLWithPath: out + "/bb.manifest.json")), as: UTF8.self))
        let listed = try #require(manifest["outputs"] as? [[String: Any]])
        for file in files {
            let entry = try #require(listed.first { $0["path"] as? String == file }, "\(file) in the manifest")
            #expect(entry["sha256"] as? String == digests[file], "\(file)")
        }
        let json = outputs.first { $0["kind"] as? String == "manifest" }
        #expect(json?["path"] as? String == out + "/bb.manifest.json")
    }

    /// `--fs` offers only file systems that have a writer (ext4, erofs and, since its protofile
    /// writer, xfs); one without a writer is refused by name.
    @Test func fsOffersOnlyWhatHasAWriter() async throws {
        let help = try await Fixtures.rootfs(["build", "--help"])
        #expect(help.status == 0)
        let fsLines = help.stdout.split(separator: "\n", omittingEmptySubsequences: false)
            .drop { !$0.contains("--fs <") }.prefix(3).joined(separator: " ")
        #expect(fsLines.contains("ext4") && fsLines.contains("erofs") && fsLines.contains("xfs"), "\(fsLines)")
        #expect(Set(FilesystemType.allCases.map(\.rawValue)) == ["ext4", "erofs", "xfs"])
        let refused = try await Fixtures.rootfs(["image", "/nonexistent", "-o", "/tmp/x.img", "--fs", "btrfs"])
        #expect(refused.status != 0)
        #expect(refused.stderr.contains("btrfs"), "\(refused.stderr)")
    }
}
