import Foundation
import Testing
@testable import RootfsKit
@testable import RootfsImage
@testable import RootfsSupport

/// Runs a checking tool (not the one that wrote the image) and returns its output.
private func check(_ tool: String, _ args: [String]) async throws -> String {
    let out = try await ProcessRunner().capture(ToolCommand(tool, args))
    return out.standardOutput + out.standardError
}

private func bytes(_ path: String) throws -> Data { try Data(contentsOf: URL(fileURLWithPath: path)) }

private let epochEnv = ["SOURCE_DATE_EPOCH": "1700000000"]

/// Every format written from the real Debian tree (root, network: mmdebstrap) and checked by another tool.
@Suite(.serialized, .requires(.root, .network, .qemu), .tags(.root, .network, .qemu)) struct FormatsTests {
    @Test func tarFromDirectoryAndFromTarIsIdenticalAndReproducible() async throws {
        let tree = try await Fixtures.debian.tree(agentInit: true)
        let dir = try Fixtures.temporaryDirectory("fmt-tar"); defer { FS.remove(dir) }
        for (args, _) in [(["image", tree.directory, "-o", dir + "/a.tar"], 0), (["image", tree.directory, "-o", dir + "/b.tar"], 0),
                          (["image", tree.directory, "-o", dir + "/a.tar.zst"], 0), (["image", dir + "/a.tar.zst", "-o", dir + "/c.tar"], 0),
                          (["image", dir + "/a.tar", "-o", dir + "/d.tar.gz"], 0)] {
            let r = try await Fixtures.rootfs(args, environment: epochEnv)
            #expect(r.status == 0, "\(args): \(r.stderr)")
        }
        #expect(try bytes(dir + "/a.tar") == bytes(dir + "/b.tar"))
        #expect(try bytes(dir + "/a.tar") == bytes(dir + "/c.tar"))
        // libarchive listing: ownership kept (/etc/shadow root:shadow), setuid kept, times clamped, sorted.
        let entries = try ArchiveReader.list(dir + "/d.tar.gz")
        let shadow = try #require(entries.first { $0.path == "etc/shadow" })
        #expect(shadow.uid == 0 && shadow.gid == 42)
        #expect(entries.contains { $0.mode & 0o4000 != 0 })
        #expect(entries.allSatisfy { $0.mtime <= 1_700_000_000 })
        #expect(["./", "."].contains(entries.first?.path ?? ""))
    }

    @Test func unsortedTarGivesTheSameBytes() async throws {
        let tree = try await Fixtures.debian.tree(agentInit: true)
        let dir = try Fixtures.temporaryDirectory("fmt-unsorted"); defer { FS.remove(dir) }
        // GNU tar, directory order (not sorted), "./" prefixes.
        try await ProcessRunner().capture(ToolCommand("tar", ["-C", tree.directory, "--numeric-owner", "-cf", dir + "/gnu.tar", "."]))
        let a = try await Fixtures.rootfs(["image", tree.directory, "-o", dir + "/a.initrd", "--compression", "none"], environment: epochEnv)
        let b = try await Fixtures.rootfs(["initrd", dir + "/gnu.tar", "-o", dir + "/b.initrd", "--compression", "none"], environment: epochEnv)
        #expect(a.status == 0 && b.status == 0, "\(a.stderr) \(b.stderr)")
        #expect(try bytes(dir + "/a.initrd") == bytes(dir + "/b.initrd"))
        let listing = try await check("cpio", ["-it", "-F", dir + "/b.initrd"])
        #expect(listing.contains("usr/bin/rootfs-agent") || listing.contains("sbin/init"))
    }

    @Test func rawDisksMBRGPTBareAndDAX() async throws {
        let tree = try await Fixtures.debian.tree(agentInit: true)
        let dir = try Fixtures.temporaryDirectory("fmt-raw"); defer { FS.remove(dir) }
        try await ProcessRunner().capture(ToolCommand("tar", ["-C", tree.directory, "-cf", dir + "/t.tar", "."]))
        for args in [["image", dir + "/t.tar", "-o", dir + "/mbr.img"],
                     ["image", tree.directory, "-o", dir + "/gpt.img", "--partition-table", "gpt"],
                     ["image", tree.directory, "-o", dir + "/bare.img", "--no-partition-table"],
                     ["image", tree.directory, "-o", dir + "/dax.img", "--dax"],
                     ["image", tree.directory, "-o", dir + "/erofs.img", "--fs", "erofs"]] {
            let r = try await Fixtures.rootfs(args, environment: epochEnv)
            #expect(r.status == 0, "\(args): \(r.stderr)")
        }
        let sfdisk = try await check("sfdisk", ["--json", dir + "/mbr.img"])
        #expect(sfdisk.contains("\"label\": \"dos\"") && sfdisk.contains("\"start\": 2048"))
        let sgdisk = try await check("sgdisk", ["-v", dir + "/gpt.img"])
        #expect(sgdisk.contains("No problems found"))
        let gptTable = try await check("sfdisk", ["--json", dir + "/gpt.img"])
        #expect(gptTable.contains("\"label\": \"gpt\""))
        // e2fsck on each file system, cut out of the disk by dd.
        for (image, skipMiB) in [("mbr.img", 1), ("gpt.img", 1), ("bare.img", 0), ("dax.img", 3)] {
            let part = dir + "/" + image + ".part"
            try await ProcessRunner().capture(ToolCommand("dd", ["if=" + dir + "/" + image, "of=" + part, "bs=1M", "skip=\(skipMiB)", "status=none"]))
            let fsck = try await check("e2fsck", ["-fn", part])
            #expect(fsck.contains("files"), "\(image): \(fsck)")
            unlink(part)
        }
        // DAX: the outer MBR points at 3 MiB, the nd_pfn_sb info block at 4 KiB is the one Kata's nsdax writes.
        let dax = try bytes(dir + "/dax.img")
        #expect(SHA256.hexDigest(of: Array(dax[4096..<8192])) == DAXHeaderTests.nsdaxInfoBlockSHA256)
        let daxTable = try await check("sfdisk", ["--json", dir + "/dax.img"])
        #expect(daxTable.contains("\"start\": 6144"))
        let erofsPart = dir + "/erofs.part"
        try await ProcessRunner().capture(ToolCommand("dd", ["if=" + dir + "/erofs.img", "of=" + erofsPart, "bs=1M", "skip=1", "status=none"]))
        _ = try await check("fsck.erofs", [erofsPart])
    }

    @Test func convertedAndFilesystemFormats() async throws {
        let tree = try await Fixtures.debian.tree(agentInit: true)
        let dir = try Fixtures.temporaryDirectory("fmt-conv"); defer { FS.remove(dir) }
        for name in ["x.qcow2", "x.vhd", "y.vhd", "x.vmdk", "x.erofs", "x.squashfs"] {
            let r = try await Fixtures.rootfs(["image", tree.directory, "-o", dir + "/" + name], environment: epochEnv)
            #expect(r.status == 0, "\(name): \(r.stderr)")
        }
        #expect(try await check("qemu-img", ["check", dir + "/x.qcow2"]).contains("No errors"))
        let vhd = try await check("qemu-img", ["info", "-f", "vpc", dir + "/x.vhd"])
        #expect(vhd.contains("file format: vpc"))
        #expect(try bytes(dir + "/x.vhd") == bytes(dir + "/y.vhd"))
        #expect(try await check("qemu-img", ["info", dir + "/x.vmdk"]).contains("file format: vmdk"))
        _ = try await check("fsck.erofs", [dir + "/x.erofs"])
        let sq = try await check("unsquashfs", ["-lln", dir + "/x.squashfs"])
        #expect(sq.contains("squashfs-root/etc/shadow"))
        #expect(sq.contains("0/42"))
    }

    @Test func buildWritesEveryRequestedFormat() async throws {
        let dir = try Fixtures.temporaryDirectory("fmt-build"); defer { FS.remove(dir) }
        let r = try await Fixtures.rootfs(["build", "debian", "--agent-init", "--format", "tar.zst", "--format", "qcow2",
                                           "--format", "squashfs", "-O", dir + "/out"], environment: epochEnv)
        #expect(r.status == 0, "\(r.stderr)")
        for name in ["debian.tar.zst", "debian.qcow2", "debian.squashfs"] {
            #expect(FS.isRegularFile(dir + "/out/" + name), "\(name)")
        }
        #expect(!FS.exists(dir + "/out/rootfs"))
    }

    @Test func kernelInitrdBundleAndISO() async throws {
        let tree = try await Fixtures.debian.tree(agentInit: true)
        let dir = try Fixtures.temporaryDirectory("fmt-boot"); defer { FS.remove(dir) }
        // Any file stands for the kernel here: the ISO's content is checked, booting is rootfs boot's.
        let kernel = dir + "/vmlinuz"
        try FS.copyFile("/bin/true", to: kernel)
        let k = try await Fixtures.rootfs(["image", tree.directory, "-o", dir + "/deb", "--format", "kernel+initrd",
                                           "--kernel", kernel, "--cmdline", "console=ttyS0 quiet"], environment: epochEnv)
        #expect(k.status == 0, "\(k.stderr)")
        #expect(try bytes(dir + "/deb-kernel") == bytes(kernel))
        #expect(try String(contentsOfFile: dir + "/deb-cmdline", encoding: .utf8) == "console=ttyS0 quiet")
        #expect(try ArchiveReader.list(dir + "/deb-initrd.img").contains { $0.path == "init" })
        let iso = try await Fixtures.rootfs(["image", tree.directory, "-o", dir + "/deb.iso", "--kernel", kernel], environment: epochEnv)
        #expect(iso.status == 0, "\(iso.stderr)")
        let found = try await check("xorriso", ["-indev", dir + "/deb.iso", "-find", "/", "-type", "f"])
        for f in ["/boot/kernel", "/boot/initrd.img", "/isolinux/isolinux.bin", "/isolinux/ldlinux.c32", "/isolinux/isolinux.cfg"] {
            #expect(found.contains("'\(f)'"), "\(f)")
        }
        let noKernel = try await Fixtures.rootfs(["image", tree.directory, "-o", dir + "/nk.iso"], environment: epochEnv)
        #expect(noKernel.status != 0 && noKernel.stderr.contains("--kernel"))
        #expect(!FS.exists(dir + "/nk.iso"))
    }
}

/// Composition: overlays and files, and the escapes they must not make.
@Suite(.serialized, .requires(.root, .network), .tags(.root, .network)) struct OverlayTests {
    @Test func overlaysKeepArchiveOwnershipAndFilesGoInside() async throws {
        let tree = try await Fixtures.debian.tree(agentInit: true)
        let dir = try Fixtures.temporaryDirectory("ovl"); defer { FS.remove(dir) }
        try FS.makeDirectories(dir + "/src/etc")
        try "hello\n".write(toFile: dir + "/src/etc/motd", atomically: false, encoding: .utf8)
        try await ProcessRunner().capture(ToolCommand("tar", ["-C", dir + "/src", "--owner=1234", "--group=99", "-cf", dir + "/ov.tar", "etc/motd"]))
        try "x".write(toFile: dir + "/one", atomically: false, encoding: .utf8)
        let r = try await Fixtures.rootfs(["image", tree.directory, "-o", dir + "/out.tar", "--overlay", dir + "/ov.tar",
                                           "--file", "/opt/new/one=" + dir + "/one"], environment: epochEnv)
        #expect(r.status == 0, "\(r.stderr)")
        let entries = try ArchiveReader.list(dir + "/out.tar")
        let motd = try #require(entries.first { $0.path == "etc/motd" })
        #expect(motd.uid == 1234 && motd.gid == 99 && motd.size == 6)
        #expect(entries.contains { $0.path == "opt/new/one" && $0.uid == 0 })
        // The shared tree is untouched.
        #expect(!FS.exists(tree.directory + "/opt/new"))
    }

    @Test func dotDotInATarOverlayIsRejected() async throws {
        let tree = try await Fixtures.debian.tree(agentInit: true)
        let dir = try Fixtures.temporaryDirectory("ovl-dotdot"); defer { FS.remove(dir) }
        try FS.makeDirectories(dir + "/a/b")
        try "x".write(toFile: dir + "/a/victim", atomically: false, encoding: .utf8)
        // tar -P keeps the '..' name.
        try await ProcessRunner().capture(ToolCommand("tar", ["-C", dir + "/a/b", "-P", "-cf", dir + "/evil.tar", "../victim"]))
        try "original".write(toFile: dir + "/a/victim", atomically: false, encoding: .utf8)
        let r = try await Fixtures.rootfs(["image", tree.directory, "-o", dir + "/out.tar", "--overlay", dir + "/evil.tar"])
        #expect(r.status != 0)
        #expect(r.stderr.contains("'..'"))
        #expect(try String(contentsOfFile: dir + "/a/victim", encoding: .utf8) == "original")
        #expect(!FS.exists(dir + "/out.tar"))
    }

    @Test func linksNeverLeadOutOfTheTree() async throws {
        let dir = try Fixtures.temporaryDirectory("ovl-links"); defer { FS.remove(dir) }
        // A small tree with a link that, resolved on the host, would point at a host directory.
        let hostDir = dir + "/host"
        try FS.makeDirectories(hostDir)
        try FS.makeDirectories(dir + "/tree/etc")
        symlink(hostDir, dir + "/tree/etc/out")                  // absolute, to the host dir
        symlink("../../../../../../../../" + hostDir, dir + "/tree/etc/up")  // climbing
        // Overlay directory: writes through both links, and carries an absolute link to a host file.
        try FS.makeDirectories(dir + "/ov/etc/out")
        try FS.makeDirectories(dir + "/ov/etc/up")
        try "a".write(toFile: dir + "/ov/etc/out/pwned", atomically: false, encoding: .utf8)
        try "b".write(toFile: dir + "/ov/etc/up/pwned", atomically: false, encoding: .utf8)
        symlink("/etc/shadow", dir + "/ov/etc/shadowlink")
        let tree = GuestTree(root: dir + "/tree")
        try OverlayApplier(tree: tree).apply(.overlay(dir + "/ov"))
        #expect(try FileManager.default.contentsOfDirectory(atPath: hostDir).isEmpty)
        // The link in the overlay is copied as a link (resolved in the guest), the host file is never read.
        #expect(try FileManager.default.destinationOfSymbolicLink(atPath: dir + "/tree/etc/shadowlink") == "/etc/shadow")
        // A tar overlay whose member goes through its own link to the host: contained too.
        try FS.makeDirectories(dir + "/t2")
        symlink(hostDir, dir + "/t2/esc")
        try await ProcessRunner().capture(ToolCommand("tar", ["-C", dir + "/t2", "-cf", dir + "/esc.tar", "esc"]))
        try FS.makeDirectories(dir + "/t3/esc")
        try "c".write(toFile: dir + "/t3/esc/pwned", atomically: false, encoding: .utf8)
        try await ProcessRunner().capture(ToolCommand("tar", ["-C", dir + "/t3", "-rf", dir + "/esc.tar", "esc/pwned"]))
        // The link resolves inside the tree, where its target does not exist: either refused, or the
        // directories are made inside the tree as the guest would make them; never written outside.
        if (try? OverlayApplier(tree: tree).apply(.overlay(dir + "/esc.tar"))) != nil {
            #expect(FS.isRegularFile(dir + "/tree" + hostDir + "/pwned"))
        }
        #expect(try FileManager.default.contentsOfDirectory(atPath: hostDir).isEmpty)
        // Extracting the same archive as a tree refuses the member under the link.
        #expect(throws: RootfsError.self) { try TreeExtractor(destination: dir + "/x").extract(.archive(dir + "/esc.tar")) }
    }

    @Test func extendAddsOverlaysToTarInitrdAndExt4() async throws {
        let tree = try await Fixtures.debian.tree(agentInit: true)
        let dir = try Fixtures.temporaryDirectory("ovl-extend"); defer { FS.remove(dir) }
        try FS.makeDirectories(dir + "/ov/etc/xcluster")
        try "node\n".write(toFile: dir + "/ov/etc/xcluster/role", atomically: false, encoding: .utf8)
        let t = try await Fixtures.rootfs(["image", tree.directory, "-o", dir + "/a.tar.zst"], environment: epochEnv)
        #expect(t.status == 0)
        for (image, out) in [(dir + "/a.tar.zst", dir + "/b.tar.zst"), (tree.initrd, dir + "/b.initrd"), (tree.image, dir + "/b.img")] {
            let r = try await Fixtures.rootfs(["extend", image, "--overlay", dir + "/ov", "-o", out], environment: epochEnv)
            #expect(r.status == 0, "\(image): \(r.stderr)")
        }
        #expect(try ArchiveReader.list(dir + "/b.tar.zst").contains { $0.path == "etc/xcluster/role" && $0.size == 5 })
        #expect(try ArchiveReader.list(dir + "/b.initrd").contains { $0.path == "etc/xcluster/role" })
        let part = dir + "/b.part"
        try await ProcessRunner().capture(ToolCommand("dd", ["if=" + dir + "/b.img", "of=" + part, "bs=1M", "skip=1", "status=none"]))
        #expect(try await check("e2fsck", ["-fn", part]).contains("files"))
        let cat = try await check("debugfs", ["-R", "cat /etc/xcluster/role", part])
        #expect(cat.contains("node"))
    }
}
