import Foundation
import Testing
@testable import RootfsKit
@testable import RootfsImage
@testable import RootfsSupport

private let secret = "HOST-SECRET-\(UInt32.random(in: 0 ... .max))"

/// Whether a file holds `needle` anywhere (outputs must never carry host files read through guest links).
private func contains(_ path: String, _ needle: String) throws -> Bool {
    let data = try Data(contentsOf: URL(fileURLWithPath: path), options: .alwaysMapped)
    return data.range(of: Data(needle.utf8)) != nil
}

/// Trees and archives built to break the writers, and a full disk. Root: device
/// nodes (mknod) and a tmpfs mount.
@Suite(.serialized, .requires(.root), .tags(.root)) struct HostileInputTestsRequiringRoot {
    /// Everything odd a tree can hold.
    func hostileTree(_ root: String, hostFile: String) throws {
        try FS.makeDirectories(root + "/etc")
        try FS.makeDirectories(root + "/a/b/c")
        try FS.makeDirectories(root + "/dev")
        symlink(hostFile, root + "/etc/host-link")                      // absolute link to a host file
        symlink("../../../../../../../../" + hostFile, root + "/a/b/c/up")  // .. chain out of the tree
        symlink("../b/c/up", root + "/a/b/loop")                       // a link to the chain
        mknod(root + "/dev/null", S_IFCHR | 0o666, dev_t((1 << 8) | 3))
        mknod(root + "/dev/sda", S_IFBLK | 0o660, dev_t(8 << 8))
        mkfifo(root + "/a/fifo", 0o644)
        try "shared".write(toFile: root + "/a/first", atomically: false, encoding: .utf8)
        link(root + "/a/first", root + "/a/second")
        for name in ["with space", "new\nline", "tab\there", "quote\"s", "<angle>"] {
            try name.write(toFile: root + "/a/" + name, atomically: false, encoding: .utf8)
        }
        let raw: [UInt8] = Array(root.utf8) + Array("/a/bad-".utf8) + [0xff, 0xfe] + Array(".bin".utf8) + [0]
        let fd = raw.withUnsafeBufferPointer { open(UnsafeRawPointer($0.baseAddress!).assumingMemoryBound(to: CChar.self), O_WRONLY | O_CREAT, 0o644) }
        #expect(fd >= 0)
        close(fd)
        // A 2 GiB sparse file with data at both ends.
        let sparse = open(root + "/a/sparse", O_WRONLY | O_CREAT, 0o644)
        _ = "head".withCString { write(sparse, $0, 4) }
        _ = "tail".withCString { pwrite(sparse, $0, 4, (2 << 30) - 4) }
        close(sparse)
        // A socket.
        let sock = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0)
        var address = sockaddr_un()
        address.sun_family = sa_family_t(AF_UNIX)
        let path = Array((root + "/a/socket").utf8CString)
        withUnsafeMutableBytes(of: &address.sun_path) { buf in for (i, c) in path.enumerated() where i < buf.count { buf[i] = UInt8(bitPattern: c) } }
        _ = withUnsafePointer(to: &address) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(sock, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) } }
        close(sock)
    }

    @Test func aTreeWithAMountInsideIsRefusedByEveryCommandThatReadsIt() async throws {
        let dir = try Fixtures.temporaryDirectory("mounted-tree")
        let host = try Fixtures.temporaryDirectory("mounted-host")
        defer { FS.remove(dir); FS.remove(host) }
        try secret.write(toFile: host + "/secret", atomically: false, encoding: .utf8)
        let tree = dir + "/tree"
        try FS.makeDirectories(tree + "/proc")
        try FS.makeDirectories(tree + "/etc")
        try "guest".write(toFile: tree + "/etc/hostname", atomically: false, encoding: .utf8)
        try await ProcessRunner().capture(ToolCommand("mount", ["--bind", host, tree + "/proc"]))
        defer { _ = try? ProcessRunnerSync.run(["umount", tree + "/proc"]) }
        let noCheck = "--no-agent-check"
        for args in [["image", tree, noCheck, "-o", dir + "/x.img"], ["image", tree, noCheck, "--fs", "erofs", "-o", dir + "/x.erofs"], ["size", tree],
                     ["diff", tree, tree]] {
            let r = try await Fixtures.rootfs(args)
            #expect(r.status != 0, "\(args): \(r.stdout)")
            #expect(r.stderr.contains("mounted inside it") && r.stderr.contains(tree + "/proc"), "\(args): \(r.stderr)")
            #expect(!FS.exists(dir + "/x.img") && !FS.exists(dir + "/x.erofs"))
        }
        // Unmounted, the same tree is read.
        try await ProcessRunner().capture(ToolCommand("umount", [tree + "/proc"]))
        let r = try await Fixtures.rootfs(["image", tree, noCheck, "-o", dir + "/x.img"])
        #expect(r.status == 0, "\(r.stderr)")
        #expect(try !contains(dir + "/x.img", secret))
    }

    @Test func everyWriterKeepsOddEntriesOrRefusesWithAReasonAndNeverReadsTheHost() async throws {
        let dir = try Fixtures.temporaryDirectory("hostile")
        defer { FS.remove(dir) }
        let hostFile = dir + "/host-secret"
        try secret.write(toFile: hostFile, atomically: false, encoding: .utf8)
        let tree = dir + "/tree"
        try hostileTree(tree, hostFile: hostFile)
        var options = ImageOptions()
        options.compression = .zstd
        let writer = ImageWriter(options: options)

        // tar: a socket cannot be stored in a tar; the refusal names it.
        await #expect {
            _ = try await writer.write(.tarZst, source: .directory(tree), to: dir + "/t.tar.zst")
        } throws: { error in
            "\(error)".contains("a/socket")
        }
        #expect(!FileManager.default.fileExists(atPath: dir + "/t.tar.zst"))
        unlink(tree + "/a/socket")

        // initrd and tar: read back, entry for entry the same as the tree.
        for format in [OutputFormat.tarZst, .initrd] {
            let out = dir + "/out" + format.fileExtension
            _ = try await writer.write(format, source: .directory(tree), to: out)
            #expect(try !contains(out, secret), "\(format) holds the host file")
            let diff = try TreeDiff().compare(.directory(tree), .archive(out))
            let unexpected = diff.filter { !($0.kind == .onlyInB && $0.pathString == "/init") }
            #expect(unexpected.isEmpty, "\(format): \(unexpected.map(\.description))")
        }

        // ext4 without SOURCE_DATE_EPOCH: mke2fs keeps every name; check with debugfs.
        let img = dir + "/plain.img"
        _ = try await writer.write(.raw, source: .directory(tree), to: img)
        #expect(try !contains(img, secret))
        let part = img + "?offset=1048576"
        let runner = ProcessRunner()
        let ls = try await runner.capture(ToolCommand("debugfs", ["-R", "ls -l /a", part])).standardOutput
        for name in ["fifo", "first", "second", "with space", "sparse", "quote\"s", "<angle>"] { #expect(ls.contains(name), "\(name) in \(ls)") }
        let dev = try await runner.capture(ToolCommand("debugfs", ["-R", "stat /dev/sda", part])).standardOutput
        #expect(dev.contains("block special") && dev.contains("08:00"))
        let up = try await runner.capture(ToolCommand("debugfs", ["-R", "stat /a/b/c/up", part])).standardOutput
        #expect(up.contains("Type: symlink") && up.contains("Size: \(("../../../../../../../../" + hostFile).utf8.count)"), "\(up)")
        let sparse = try await runner.capture(ToolCommand("debugfs", ["-R", "stat /a/sparse", part])).standardOutput
        #expect(sparse.contains("Size: 2147483648"))
        try await runner.capture(ToolCommand("e2fsck", ["-fn", part]))

        // ext4 with SOURCE_DATE_EPOCH, native writer: no name goes through debugfs, so a newline is kept.
        options.epoch = 1_700_000_000
        _ = try await ImageWriter(options: options).write(.raw, source: .directory(tree), to: dir + "/native-epoch.img")
        try await runner.capture(ToolCommand("e2fsck", ["-fn", dir + "/native-epoch.img?offset=1048576"]))
        let names = try await runner.capture(ToolCommand("debugfs", ["-R", "ls -l /a", dir + "/native-epoch.img?offset=1048576"])).standardOutput
        #expect(names.contains("new\\x0aline"), "\(names)")  // debugfs prints the byte as \x0a

        // ext4 with SOURCE_DATE_EPOCH, mke2fs writer: every name is addressed by debugfs; a newline cannot be, and is refused by name.
        options.ext4Writer = .mke2fs
        await #expect {
            _ = try await ImageWriter(options: options).write(.raw, source: .directory(tree), to: dir + "/epoch.img")
        } throws: { error in
            "\(error)".contains("new\\nline") && "\(error)".contains("newline")
        }
        #expect(!FileManager.default.fileExists(atPath: dir + "/epoch.img"))
        unlink(tree + "/a/new\nline")
        _ = try await ImageWriter(options: options).write(.raw, source: .directory(tree), to: dir + "/epoch.img")
        let quoted = try await runner.capture(ToolCommand("debugfs", ["-R", "stat \"/a/quote\"\"s\"", dir + "/epoch.img?offset=1048576"])).standardOutput
        #expect(quoted.contains("mtime: 0x6553f100"), "\(quoted)")
        #expect(!listingHasTemporaries(dir))
    }

    @Test func hundredThousandSmallFiles() async throws {
        let dir = try Fixtures.temporaryDirectory("many")
        defer { FS.remove(dir) }
        let tree = dir + "/tree"
        for d in 0..<100 {
            try FS.makeDirectories(tree + "/d\(d)")
            for f in 0..<1000 {
                let fd = open(tree + "/d\(d)/f\(f)", O_WRONLY | O_CREAT, 0o644)
                _ = "\(d).\(f)".withCString { write(fd, $0, strlen($0)) }
                close(fd)
            }
        }
        var options = ImageOptions()
        options.epoch = 1_700_000_000
        let writer = ImageWriter(options: options)
        _ = try await writer.write(.tarZst, source: .directory(tree), to: dir + "/many.tar.zst")
        #expect(try ArchiveReader.list(dir + "/many.tar.zst").count == 100_000 + 100 + 1)
        _ = try await writer.write(.raw, source: .directory(tree), to: dir + "/many.img")
        let out = try await ProcessRunner().capture(ToolCommand("e2fsck", ["-fn", dir + "/many.img?offset=1048576"]))
        #expect((out.standardOutput + out.standardError).contains("100112/") || (out.standardOutput + out.standardError).contains("files"))
        let cat = try await ProcessRunner().capture(ToolCommand("debugfs", ["-R", "cat /d99/f999", dir + "/many.img?offset=1048576"])).standardOutput
        #expect(cat == "99.999")
    }

    @Test func archivesAndOverlaysWithEscapingNamesAreRejected() async throws {
        let dir = try Fixtures.temporaryDirectory("escapes")
        defer { FS.remove(dir) }
        // GNU tar -P with a name transform keeps the hostile names as given.
        for (name, member) in [("dotdot", "../escaped-\(getpid())"), ("absolute", dir + "/absolute-escape")] {
            let stage = dir + "/stage-\(name)"
            try FS.makeDirectories(stage)
            try "x".write(toFile: stage + "/f", atomically: false, encoding: .utf8)
            try await ProcessRunner().capture(ToolCommand("tar", ["-C", stage, "-P", "-cf", dir + "/\(name).tar", "--transform", "s,^f$,\(member),", "f"]))
            let listed = try ArchiveReader.list(dir + "/\(name).tar").map(\.path)
            #expect(listed == [member], "\(listed)")
            let image = try await Fixtures.rootfs(["image", dir + "/\(name).tar", "-o", dir + "/\(name).initrd"])
            #expect(image.status == 1 && (image.stderr.contains("'..'") || image.stderr.contains("absolute member name")), "\(image.stderr)")
            let target = dir + "/tree"
            try FS.makeDirectories(target + "/sbin")
            let r = try await ExtendProbe.overlay(dir + "/\(name).tar", onto: target)
            #expect(r.contains("..") || r.contains("absolute"), "\(r)")
        }
        #expect(!FS.exists(FS.parent(dir) + "/escaped-\(getpid())"))
        #expect(!FS.exists(dir + "/absolute-escape"))
    }

    @Test func aFullDiskGivesAClearErrorAndNoPartialOutput() async throws {
        let dir = try Fixtures.temporaryDirectory("full")
        defer { FS.remove(dir) }
        let mount = dir + "/small"
        try FS.makeDirectories(mount)
        try await ProcessRunner().capture(ToolCommand("mount", ["-t", "tmpfs", "-o", "size=4m", "tmpfs", mount]))
        defer { _ = try? ProcessRunnerSync.run(["umount", mount]) }
        let tree = dir + "/tree"
        try FS.makeDirectories(tree + "/sbin")
        try await ProcessRunner().capture(ToolCommand("dd", ["if=/dev/urandom", "of=\(tree)/big", "bs=1M", "count=8", "status=none"]))
        let writer = ImageWriter(options: ImageOptions())
        for format in [OutputFormat.tar, .initrd, .raw, .qcow2] {
            await #expect {
                _ = try await writer.write(format, source: .directory(tree), to: mount + "/out" + format.fileExtension)
            } throws: { error in
                let text = "\(error)"
                return text.contains("No space left on device") || text.contains("disk holding")
            }
            #expect(listing(mount).isEmpty, "\(format): \(listing(mount))")
        }
    }

    private func listing(_ dir: String) -> [String] { ((try? FileManager.default.contentsOfDirectory(atPath: dir)) ?? []).sorted() }
    private func listingHasTemporaries(_ dir: String) -> Bool { listing(dir).contains { $0.contains(".tmp-") } }
}

/// Applies one overlay through the library and returns the error text ("" when it was applied).
enum ExtendProbe {
    static func overlay(_ path: String, onto tree: String) async throws -> String {
        do {
            try OverlayApplier(tree: GuestTree(root: tree)).apply(.overlay(path))
            return ""
        } catch {
            return "\(error)"
        }
    }
}
