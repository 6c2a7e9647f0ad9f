import Foundation
import Testing
@testable import RootfsKit
@testable import RootfsImage
@testable import RootfsSupport

/// `rootfs ls`, `cp`, `size`, `diff` and `check` on the images rootfs writes (a tar, a raw and a
/// qcow2 ext4 disk, an erofs disk, a squashfs image), through the real CLI, and on bad input.
/// The images are written by `rootfs image` and read back by rootfs; qemu-img checks the qcow2.
@Suite(.requires(.qemuImg), .tags(.qemuImg)) struct ImageInspectionTests {
    /// Different from the host's /etc/hostname, so a copy read from the host would show.
    static let hostname = "inspect-\(getpid())\n"

    /// A small tree with an agent script, odd names, hard links (one from another directory) and
    /// links that try to leave the tree; returns the directory holding `tree/`.
    static func makeTree() throws -> String {
        let dir = try Fixtures.temporaryDirectory("inspect")
        let t = dir + "/tree"
        for d in ["usr/bin", "sbin", "etc", "usr/lib/data", "usr/share/doc"] { try FS.makeDirectories(t + "/" + d) }
        try "#!/bin/sh\nexit 0\n".write(toFile: t + "/usr/bin/rootfs-agent", atomically: false, encoding: .utf8)
        chmod(t + "/usr/bin/rootfs-agent", 0o755)
        symlink("/usr/bin/rootfs-agent", t + "/sbin/init")
        try hostname.write(toFile: t + "/etc/hostname", atomically: false, encoding: .utf8)
        try "line\n".write(toFile: t + "/etc/odd\nname", atomically: false, encoding: .utf8)
        let bad = Array((t + "/etc/bad").utf8) + [0xff] + Array("name".utf8)
        let fd = bad.withCString { open($0, O_WRONLY | O_CREAT | O_EXCL, 0o600) }
        #expect(fd >= 0)
        close(fd)
        let big = String(repeating: "rootfs inspects images\n", count: 4000)
        try big.write(toFile: t + "/usr/lib/data/big", atomically: false, encoding: .utf8)
        link(t + "/usr/lib/data/big", t + "/usr/lib/data/big-link")
        link(t + "/usr/lib/data/big", t + "/usr/share/also-big")
        try "read me\n".write(toFile: t + "/usr/share/doc/readme", atomically: false, encoding: .utf8)
        symlink("../../../../../../etc/hostname", t + "/escape")
        symlink("doc/readme", t + "/usr/share/readme-link")
        return dir
    }

    static let epoch = ["SOURCE_DATE_EPOCH": "1700000000"]

    /// Writes `name` from `source` with `rootfs image` (extra flags after).
    static func image(_ source: String, _ output: String, _ flags: [String] = []) async throws {
        let r = try await Fixtures.rootfs(["image", source, "-o", output] + flags, environment: epoch)
        try #require(r.status == 0, "rootfs image \(output): \(r.stderr)")
    }

    @Test func lsCpSizeAndDiffReadRawQcow2AndErofsDisksAndSquashfs() async throws {
        let dir = try Self.makeTree()
        defer { FS.remove(dir) }
        let tar = dir + "/t.tar"
        try await Self.image(dir + "/tree", tar)
        let raw = dir + "/t.img", qcow2 = dir + "/t.qcow2", erofs = dir + "/e.img", squashfs = dir + "/t.squashfs"
        try await Self.image(tar, raw)
        try await Self.image(tar, qcow2)
        try await Self.image(tar, erofs, ["--fs", "erofs"])
        try await Self.image(tar, squashfs)
        // A second tool agrees the qcow2 is one.
        #expect(try await Fixtures.run("/usr/bin/qemu-img", ["check", qcow2]).status == 0)

        // The disks made from the tar hold exactly the tar's tree, hard links, owners and times included.
        for disk in [raw, qcow2] {
            let d = try await Fixtures.rootfs(["diff", tar, disk])
            #expect(d.status == 0, "diff \(disk): \(d.stdout) \(d.stderr)")
            #expect(d.stdout.isEmpty)
        }
        #expect(try await Fixtures.rootfs(["diff", tar, squashfs]).status == 0)
        // fsck.erofs extracts hard links as separate files: every other attribute still agrees.
        for image in [erofs] {
            let d = try await Fixtures.rootfs(["diff", tar, image])
            let lines = d.stdout.split(separator: "\n").map(String.init)
            let unexpected = lines.filter { !$0.contains("hard link to:") }
            #expect(d.status <= 1 && unexpected.isEmpty, "diff \(image): \(d.stdout) \(d.stderr)")
        }
        // A changed tree is seen through the disk, too.
        try "other\n".write(toFile: dir + "/tree/etc/hostname", atomically: false, encoding: .utf8)
        let changed = try await Fixtures.rootfs(["diff", "--ignore-mtime", dir + "/tree", qcow2])
        #expect(changed.status == 1 && changed.stdout.contains("changed: /etc/hostname:"), "\(changed.stdout) \(changed.stderr)")

        for image in [raw, qcow2, erofs, squashfs] {
            let ls = try await Fixtures.rootfs(["ls", image, "/etc"])
            #expect(ls.status == 0, "ls \(image): \(ls.stderr)")
            let lines = ls.stdout.split(separator: "\n").map(String.init)
            #expect(lines.count == 3, "\(image): \(ls.stdout)")
            #expect(lines.contains { $0.hasPrefix("-rw-r--r-- 0 0 ") && $0.hasSuffix(" \(Self.hostname.utf8.count) 2023-11-14 22:13 hostname") },
                    "\(image): \(ls.stdout)")
            // Odd names stay on one line, escaped.
            #expect(lines.contains { $0.hasSuffix(" odd\\nname") } && lines.contains { $0.hasSuffix(" bad\\xffname") }, "\(image): \(ls.stdout)")
            let top = try await Fixtures.rootfs(["ls", image])
            #expect(top.stdout.contains(" escape -> ../../../../../../etc/hostname"), "\(image): \(top.stdout)")
            #expect(top.stdout.split(separator: "\n").contains { $0.hasPrefix("drwxr-xr-x") && $0.hasSuffix(" usr") }, "\(top.stdout)")
            // PATH's links are followed inside the image: /sbin/init lists the agent.
            let agent = try await Fixtures.rootfs(["ls", image, "/sbin/init"])
            #expect(agent.stdout.hasPrefix("-rwxr-xr-x") && agent.stdout.contains(" rootfs-agent"), "\(image): \(agent.stdout) \(agent.stderr)")

            // cp: a file, a file through an escaping link and through /.., a directory whose hard link leads outside it.
            let out = try Fixtures.temporaryDirectory("inspect-cp")
            defer { FS.remove(out) }
            for (guest, name) in [("/etc/hostname", "h"), ("/escape", "e"), ("/../../etc/hostname", "dotdot"), ("/usr/share/readme-link", "r")] {
                let cp = try await Fixtures.rootfs(["cp", image + ":" + guest, out + "/" + name])
                #expect(cp.status == 0, "cp \(image):\(guest): \(cp.stderr)")
            }
            #expect(try String(contentsOfFile: out + "/h", encoding: .utf8) == Self.hostname)
            #expect(try String(contentsOfFile: out + "/e", encoding: .utf8) == Self.hostname)
            #expect(try String(contentsOfFile: out + "/dotdot", encoding: .utf8) == Self.hostname)
            #expect(try String(contentsOfFile: out + "/r", encoding: .utf8) == "read me\n")
            let share = try await Fixtures.rootfs(["cp", image + ":/usr/share", out])
            #expect(share.status == 0, "cp \(image):/usr/share: \(share.stderr)")
            #expect(FS.fileSize(out + "/share/also-big") == 4000 * 23)
            #expect((try? FileManager.default.destinationOfSymbolicLink(atPath: out + "/share/readme-link")) == "doc/readme")
            #expect(try String(contentsOfFile: out + "/share/doc/readme", encoding: .utf8) == "read me\n")
            // The whole tree: links copied as links, never followed on the host.
            let all = try await Fixtures.rootfs(["cp", image + ":/", out + "/root"])
            #expect(all.status == 0, "cp \(image):/: \(all.stderr)")
            #expect((try? FileManager.default.destinationOfSymbolicLink(atPath: out + "/root/escape")) == "../../../../../../etc/hostname")
            var a = stat(), b = stat()
            #expect(lstat(out + "/root/usr/lib/data/big", &a) == 0 && lstat(out + "/root/usr/lib/data/big-link", &b) == 0)
            if image != erofs { #expect(a.st_ino == b.st_ino, "hard links stay hard links") }
            #expect(try Data(contentsOf: URL(fileURLWithPath: out + "/share/also-big")) == Data(contentsOf: URL(fileURLWithPath: dir + "/tree/usr/lib/data/big")))
            #expect(a.st_mode & 0o777 == 0o644 && a.st_mtim.tv_sec == 1_700_000_000, "mode and time kept")
            // Into an existing directory, a directory is never merged.
            let again = try await Fixtures.rootfs(["cp", image + ":/usr/share", out])
            #expect(again.status != 0 && again.stderr.contains("already exists"), "\(again.stderr)")
        }

        // size: the same bytes in every format.
        var totals: [Int64] = []
        for image in [tar, raw, qcow2, erofs, squashfs] {
            let size = try await Fixtures.rootfs(["size", "--json", image])
            #expect(size.status == 0, "size \(image): \(size.stderr)")
            let json = try JSONSerialization.jsonObject(with: Data(size.stdout.utf8)) as? [String: Any]
            totals.append((json?["totalBytes"] as? NSNumber)?.int64Value ?? -1)
            #expect(json?["source"] as? String == image)
        }
        let hardLinked = Int64(4000 * 23)
        #expect(totals[0] > hardLinked && [totals[1], totals[2], totals[4]].allSatisfy { $0 == totals[0] }, "\(totals)")
        // The extracted erofs counts each former hard link as a file of its own.
        #expect(totals[3] == totals[0] + 2 * hardLinked, "\(totals)")
    }

    @Test func checkReadsDisksAndArchivesAndNamesWhatIsMissing() async throws {
        let dir = try Self.makeTree()
        defer { FS.remove(dir) }
        let qcow2 = dir + "/t.qcow2"
        try await Self.image(dir + "/tree", qcow2)
        let ok = try await Fixtures.rootfs(["check", "--agent-init", qcow2])
        #expect(ok.status == 0 && ok.stdout.contains("ok (init and agent present, agent is init; ext4 file system in partition 1 of a qcow2 disk)"),
                "\(ok.stdout) \(ok.stderr)")
        let json = try await Fixtures.rootfs(["check", "--json", qcow2])
        let report = try JSONSerialization.jsonObject(with: Data(json.stdout.utf8)) as? [String: Any]
        #expect(json.status == 0 && report?["ok"] as? Bool == true && report?["rootfs"] as? String == qcow2, "\(json.stdout) \(json.stderr)")
        // An ISO 9660 image (Rock Ridge, made by xorriso) is read by libarchive in process.
        let iso = dir + "/t.iso"
        #expect(try await Fixtures.run("/usr/bin/xorriso", ["-as", "mkisofs", "-quiet", "-R", "-o", iso, dir + "/tree"]).status == 0)
        let isoCheck = try await Fixtures.rootfs(["check", iso])
        #expect(isoCheck.status == 0 && isoCheck.stdout.contains("ISO 9660 image"), "\(isoCheck.stdout) \(isoCheck.stderr)")
        let isoCopy = dir + "/from-iso"
        #expect(try await Fixtures.rootfs(["cp", iso + ":/etc/hostname", isoCopy]).status == 0)
        #expect(try String(contentsOfFile: isoCopy, encoding: .utf8) == Self.hostname)
        // A tree without its agent, as a gzip tar: check says what is missing.
        unlink(dir + "/tree/usr/bin/rootfs-agent")
        let bad = dir + "/bad.tar.gz"
        try await Self.image(dir + "/tree", bad, ["--no-agent-check"])
        let missing = try await Fixtures.rootfs(["check", bad])
        #expect(missing.status != 0 && missing.stderr.contains("is not a bootable rootfs") && missing.stderr.contains("the agent is missing"),
                "\(missing.stderr)")
    }

    @Test func corruptImagesAreClearErrorsAndCopiesStayInside() async throws {
        let dir = try Self.makeTree()
        defer { FS.remove(dir) }
        let raw = dir + "/t.img"
        try await Self.image(dir + "/tree", raw)
        // A disk cut short: its partition lies beyond the end.
        let cut = dir + "/cut.img"
        try FileManager.default.copyItem(atPath: raw, toPath: cut)
        #expect(truncate(cut, 1_500_000) == 0)
        let truncated = try await Fixtures.rootfs(["ls", cut])
        #expect(truncated.status != 0 && truncated.stderr.contains("truncated"), "\(truncated.stderr)")
        // Bytes that are no image at all.
        let noise = dir + "/noise.bin"
        try Data((0..<70000).map { UInt8(truncatingIfNeeded: $0 &* 7 &+ 3) }).write(to: URL(fileURLWithPath: noise))
        let none = try await Fixtures.rootfs(["size", noise])
        #expect(none.status != 0 && none.stderr.contains("is not an image rootfs can read"), "\(none.stderr)")
        // A qcow2 header over garbage: qemu-img's refusal, named.
        let fake = dir + "/fake.qcow2"
        try Data([0x51, 0x46, 0x49, 0xfb, 0, 0, 0, 3] + [UInt8](repeating: 0, count: 8) + [UInt8](repeating: 0xee, count: 4096))
            .write(to: URL(fileURLWithPath: fake))
        let q = try await Fixtures.rootfs(["diff", fake, raw])
        #expect(q.status == 2 && q.stderr.contains("qemu-img cannot read it"), "\(q.stderr)")
        // A qcow2 naming a backing file (qemu-img would open that host file): refused before qemu-img runs.
        let backed = dir + "/backed.qcow2"
        #expect(try await Fixtures.run("/usr/bin/qemu-img", ["create", "-f", "qcow2", "-b", raw, "-F", "raw", backed]).status == 0)
        let b = try await Fixtures.rootfs(["ls", backed])
        #expect(b.status != 0 && b.stderr.contains("is a qcow2 disk with a backing file"), "\(b.stderr)")
        // Names that leave the image are resolved inside it, or refused.
        let out = try Fixtures.temporaryDirectory("inspect-out")
        defer { FS.remove(out) }
        let outside = try await Fixtures.rootfs(["cp", raw + ":/../../etc/passwd", out + "/p"])
        #expect(outside.status != 0 && outside.stderr.contains("has no /../../etc/passwd") && !FS.exists(out + "/p"), "\(outside.stderr)")
        let special = try await Fixtures.rootfs(["cp", raw + ":/etc/hostname/x", out + "/x"])
        #expect(special.status != 0 && special.stderr.contains("/etc/hostname is not a directory"), "\(special.stderr)")
        let noImage = try await Fixtures.rootfs(["cp", dir + "/missing.img:/etc/hostname", out])
        #expect(noImage.status != 0 && noImage.stderr.contains("names no image"), "\(noImage.stderr)")
        // Nothing but the copies asked for was left in the output directory (no temporary names).
        #expect(try FileManager.default.contentsOfDirectory(atPath: out).isEmpty)
    }
}
