import Foundation
import Testing
@testable import RootfsKit
@testable import RootfsImage
@testable import RootfsSupport

/// `rootfs extend` on ext4 images: the image's own tree plus the overlays,
/// written again by the native writer. Each case the debugfs path got wrong,
/// through the real CLI, judged by e2fsck -fn and read back with debugfs and
/// Ext4Reader. Root: extraction keeps owners.
@Suite(.serialized, .requires(.root), .tags(.root)) struct ExtendExt4TestsRequiringRoot {
    static let epoch = 1_700_000_000

    static func base(_ dir: String) throws -> String {
        let tree = dir + "/tree"
        for d in ["/sbin", "/usr/bin", "/usr/lib", "/etc"] { try FS.makeDirectories(tree + d) }
        for exe in ["/sbin/init", "/usr/bin/rootfs-agent"] {
            try "#!/bin/sh\n".write(toFile: tree + exe, atomically: false, encoding: .utf8)
            chmod(tree + exe, 0o755)
        }
        symlink("usr/lib", tree + "/lib")
        try "old\n".write(toFile: tree + "/etc/conf", atomically: false, encoding: .utf8)
        try "libc\n".write(toFile: tree + "/usr/lib/libc.so", atomically: false, encoding: .utf8)
        chown(tree + "/usr/lib/libc.so", 1234, 5678)
        return tree
    }

    static func debugfs(_ image: String, _ request: String) async throws -> String {
        try await ProcessRunner().capture(ToolCommand("debugfs", ["-R", request, image])).standardOutput
    }

    static func fsck(_ image: String) async throws {
        do {
            _ = try await ProcessRunner().capture(ToolCommand("e2fsck", ["-fn", image]))
        } catch let failure as ToolFailure {
            Issue.record("e2fsck -fn \(image) exited \(failure.status): \(failure.outputTail.joined(separator: "\n"))")
        }
    }

    /// A directory over the image's `/lib -> usr/lib`, a directory where the image
    /// has a file, a file replaced, an mtime, a link target with spaces: all as a
    /// guest would see them; the disk keeps its size, partition offset and UUID.
    @Test func overlaysOnAnExt4ImageAreResolvedInsideTheGuest() async throws {
        let dir = try Fixtures.temporaryDirectory("extend-ext4")
        defer { FS.remove(dir) }
        let tree = try Self.base(dir)
        let env = ["SOURCE_DATE_EPOCH": String(Self.epoch)]
        let made = try await Fixtures.rootfs(["image", tree, "-o", dir + "/base.img"], environment: env)
        #expect(made.status == 0, "\(made.stderr)")
        let ov = dir + "/ov"
        try FS.makeDirectories(ov + "/lib/modules")
        try "module\n".write(toFile: ov + "/lib/modules/extra.ko", atomically: false, encoding: .utf8)
        try FS.makeDirectories(ov + "/etc/conf")                       // a directory where the image has a file
        try "inside\n".write(toFile: ov + "/etc/conf/part", atomically: false, encoding: .utf8)
        try "new\n".write(toFile: ov + "/etc/motd", atomically: false, encoding: .utf8)
        symlink("a target with spaces", ov + "/etc/spaced")
        let touched = try await Fixtures.run("/usr/bin/touch", ["-d", "@1650000000", ov + "/etc/motd"])
        #expect(touched.status == 0)
        let r = try await Fixtures.rootfs(["extend", dir + "/base.img", "--overlay", ov, "-o", dir + "/new.img"], environment: env)
        #expect(r.status == 0, "\(r.stderr)")
        let part = dir + "/new.img?offset=1048576"
        try await Self.fsck(part)
        #expect(FS.fileSize(dir + "/new.img") == FS.fileSize(dir + "/base.img"))
        #expect(try await Self.debugfs(part, "stat /lib").contains("Fast link dest: \"usr/lib\""), "the link stays a link")
        #expect(try await Self.debugfs(part, "cat /usr/lib/modules/extra.ko") == "module\n")
        #expect(try await Self.debugfs(part, "cat /etc/conf/part") == "inside\n")
        #expect(try await Self.debugfs(part, "cat /etc/motd") == "new\n")
        #expect(try await Self.debugfs(part, "stat /etc/motd").contains(String(format: "mtime: 0x%08x", 1_650_000_000)))
        #expect(try await Self.debugfs(part, "stat /etc/spaced").contains("Fast link dest: \"a target with spaces\""))
        let libc = try await Self.debugfs(part, "stat /usr/lib/libc.so")
        #expect(libc.contains("User:  1234   Group:  5678"), "the image's owners kept: \(libc)")
        let uuid = { (image: String) async throws -> String? in
            try await Self.debugfs(image, "stats").split(separator: "\n").first { $0.hasPrefix("Filesystem UUID") }.map(String.init)
        }
        #expect(try await uuid(part) == (try await uuid(dir + "/base.img?offset=1048576")))
        let mbr = try OwnedFileDescriptor(path: dir + "/new.img", flags: O_RDONLY).read(count: 512, at: 0)
        let oldMBR = try OwnedFileDescriptor(path: dir + "/base.img", flags: O_RDONLY).read(count: 512, at: 0)
        #expect(mbr == oldMBR, "the partition table is kept")
    }

    /// A 4 GiB image (mostly free space) stays sparse through extend; a GPT disk keeps its backup header.
    @Test func aSparse4GiBImageStaysSparseAndGPTKeepsItsBackup() async throws {
        let dir = try Fixtures.temporaryDirectory("extend-sparse")
        defer { FS.remove(dir) }
        let tree = try Self.base(dir)
        let env = ["SOURCE_DATE_EPOCH": String(Self.epoch)]
        let made = try await Fixtures.rootfs(["image", tree, "-o", dir + "/big.img", "--free-space", "4096", "--partition-table", "gpt"], environment: env)
        #expect(made.status == 0, "\(made.stderr)")
        let ov = dir + "/ov"
        try FS.makeDirectories(ov + "/etc")
        try "x\n".write(toFile: ov + "/etc/added", atomically: false, encoding: .utf8)
        let r = try await Fixtures.rootfs(["extend", dir + "/big.img", "--overlay", ov, "-o", dir + "/new.img"], environment: env)
        #expect(r.status == 0, "\(r.stderr)")
        #expect(FS.fileSize(dir + "/new.img") == FS.fileSize(dir + "/big.img") && FS.fileSize(dir + "/new.img") > 4 << 30)
        var st = stat()
        #expect(lstat(dir + "/new.img", &st) == 0 && st.st_blocks * 512 < 128 << 20, "allocated \(st.st_blocks * 512) bytes")
        try await Self.fsck(dir + "/new.img?offset=1048576")
        #expect(try await Self.debugfs(dir + "/new.img?offset=1048576", "cat /etc/added") == "x\n")
        let verify = try await Fixtures.run("/usr/sbin/sgdisk", ["-v", dir + "/new.img"])
        #expect(verify.status == 0 && !verify.stdout.contains("Problem"), "\(verify.stdout)")
    }

    /// A bare file system too small for the overlays grows, with a warning; a
    /// partitioned one is refused with a hint, its image untouched.
    @Test func aFileSystemTooSmallGrowsWhenBareAndIsRefusedWhenPartitioned() async throws {
        let dir = try Fixtures.temporaryDirectory("extend-grow")
        defer { FS.remove(dir) }
        let tree = try Self.base(dir)
        let env = ["SOURCE_DATE_EPOCH": String(Self.epoch)]
        for flags in [["--no-partition-table"], []] {
            let made = try await Fixtures.rootfs(["image", tree, "-o", dir + "/small.img", "--free-space", "0"] + flags, environment: env)
            #expect(made.status == 0, "\(made.stderr)")
            let ov = dir + "/ov"
            try FS.makeDirectories(ov)
            let big = open(ov + "/big", O_CREAT | O_WRONLY, 0o644)
            var chunk = [UInt8](repeating: 0x42, count: 1 << 20)
            for _ in 0..<64 { _ = write(big, &chunk, chunk.count) }
            close(big)
            let r = try await Fixtures.rootfs(["extend", dir + "/small.img", "--overlay", ov, "-o", dir + "/grown.img"], environment: env)
            if flags.isEmpty {
                #expect(r.status != 0 && r.stderr.contains("--free-space"), "\(r.stderr)")
                #expect(!FS.exists(dir + "/grown.img"))
            } else {
                #expect(r.status == 0 && r.stderr.contains("grew from"), "\(r.stderr)")
                #expect(FS.fileSize(dir + "/grown.img") > FS.fileSize(dir + "/small.img"))
                try await Self.fsck(dir + "/grown.img")
                #expect(try await Self.debugfs(dir + "/grown.img", "stat /big").contains("Size: 67108864"))
            }
            FS.remove(dir + "/small.img"); FS.remove(dir + "/grown.img"); FS.remove(ov)
        }
    }

    /// An ordinary user (nobody, via setpriv) extends an ext4 image: no debugfs, the same
    /// native rewrite as root, with the image's owners, modes and device nodes taken from
    /// its inodes. Hostile link targets and a tar member name (LF / CR LF then `!touch`)
    /// are stored byte for byte and run nothing.
    @Test func anOrdinaryUserExtendsAnExt4ImageKeepingItsOwnersAndRunningNothing() async throws {
        let dir = try Fixtures.temporaryDirectory("extend-nobody")
        defer { FS.remove(dir) }
        chmod(dir, 0o777)
        let tree = try Self.base(dir)
        try FS.makeDirectories(tree + "/dev")
        #expect(mknod(tree + "/dev/null", S_IFCHR | 0o666, 0x103 /* makedev(1, 3) */) == 0)
        chown(tree + "/etc/conf", 0, 42)
        chmod(tree + "/usr/bin/rootfs-agent", 0o4755)
        let env = ["SOURCE_DATE_EPOCH": String(Self.epoch)]
        let made = try await Fixtures.rootfs(["image", tree, "-o", dir + "/base.img"], environment: env)
        #expect(made.status == 0, "\(made.stderr)")
        chmod(dir + "/base.img", 0o644)
        let ov = dir + "/ov"
        try FS.makeDirectories(ov + "/etc")
        let targets: [String: String] = ["evil-lf": "x\n!touch canary-lf", "evil-crlf": "x\r\n!touch \(dir)/canary-crlf"]
        for (name, target) in targets { symlink(target, ov + "/etc/" + name) }
        try "new\n".write(toFile: ov + "/etc/motd", atomically: false, encoding: .utf8)
        try FS.makeDirectories(dir + "/stage")
        try "t\n".write(toFile: dir + "/stage/f", atomically: false, encoding: .utf8)
        try await ProcessRunner().capture(ToolCommand("tar", ["-C", dir + "/stage", "-cf", dir + "/evil.tar",
                                                              "--transform", "s,^f$,etc/x\r\n!touch canary-tar,", "f"]))
        for path in [ov, ov + "/etc", dir + "/evil.tar", dir + "/stage"] { chmod(path, 0o755) }
        let r = try await Fixtures.run("/usr/bin/setpriv", [
            "--reuid=65534", "--regid=65534", "--clear-groups", "env", "SOURCE_DATE_EPOCH=\(Self.epoch)",
            Fixtures.rootfsBinary, "extend", dir + "/base.img", "--overlay", ov, "--overlay", dir + "/evil.tar",
            "-o", dir + "/new.img"], workingDirectory: dir)
        #expect(r.status == 0, "\(r.stderr)")
        let left = try FileManager.default.contentsOfDirectory(atPath: dir).filter { $0.hasPrefix("canary") }
        #expect(left.isEmpty, "host commands ran: \(left)")
        var st = stat()
        #expect(lstat(dir + "/new.img", &st) == 0 && st.st_uid == 65534, "written by nobody")
        let part = dir + "/new.img?offset=1048576"
        try await Self.fsck(part)
        // Every item read back by Ext4Reader: link targets and the tar's name byte for byte,
        // owners from the image's inodes (uid 0 stays 0), the device node and setuid bit kept.
        var items: [[UInt8]: TreeItem] = [:]
        try TreeSource.ext4(path: dir + "/new.img", offset: 1 << 20).walk { items[$0.path] = $0 }
        for (name, target) in targets {
            #expect(items[Array("etc/\(name)".utf8)]?.linkTarget == Array(target.utf8), "\(name)")
        }
        #expect(items[Array("etc/x\r\n!touch canary-tar".utf8)]?.size == 2, "the tar member keeps its name")
        #expect(items[Array("etc/motd".utf8)]?.size == 4)
        let libc = items[Array("usr/lib/libc.so".utf8)]
        #expect(libc?.uid == 1234 && libc?.gid == 5678, "\(String(describing: libc))")
        let conf = items[Array("etc/conf".utf8)]
        #expect(conf?.uid == 0 && conf?.gid == 42)
        for path in ["sbin/init", "etc", "usr/lib", "etc/motd", "etc/evil-lf"] {
            #expect(items[Array(path.utf8)]?.uid == 0 && items[Array(path.utf8)]?.gid == 0, "\(path) is root's, not nobody's")
        }
        #expect(items[Array("usr/bin/rootfs-agent".utf8)]?.mode == FileType.reg | 0o4755)
        let null = items[Array("dev/null".utf8)]
        #expect(null?.fileType == FileType.chr && null?.rdev == UInt64(0x103 /* makedev(1, 3) */), "\(String(describing: null))")
        #expect(try await Self.debugfs(part, "stat /lib").contains("Fast link dest: \"usr/lib\""))
    }
}
