import Foundation
import Testing
@testable import RootfsKit
@testable import RootfsImage
@testable import RootfsSupport

/// The native ext4 writer, checked only with tools that did not write the
/// image: e2fsck (clean, exit 0) and debugfs (stat, cat, ls, rdump) of e2fsprogs.
/// Root: the synthetic tree has device nodes and foreign owners.
@Suite(.serialized, .requires(.root), .tags(.root)) struct Ext4WriterTestsRequiringRoot {
    static let epoch = 1_700_000_000

    /// Every entry type: files (empty, random, 200 MiB of zeros created sparse), deep
    /// directories, a directory of 5000 entries, short and long symlinks, devices
    /// (old and new encodings), a fifo, a socket-free tree, hard links, a non-UTF-8 name.
    static func makeTree() throws -> String {
        let root = try Fixtures.temporaryDirectory("ext4-tree") + "/tree"
        try FS.makeDirectories(root + "/a/b/c/d/e/f/g/h")
        try FS.makeDirectories(root + "/many")
        try FS.makeDirectories(root + "/dev")
        try "hello\n".write(toFile: root + "/a/file", atomically: false, encoding: .utf8)
        chown(root + "/a/file", 1234, 5678)
        chmod(root + "/a/file", 0o4755)
        link(root + "/a/file", root + "/a/b/hard")
        link(root + "/a/file", root + "/hard2")
        _ = FileManager.default.createFile(atPath: root + "/empty", contents: Data())
        var random = [UInt8](repeating: 0, count: 300_001)
        for i in random.indices { random[i] = UInt8(truncatingIfNeeded: i &* 2654435761 >> 13) }
        _ = FileManager.default.createFile(atPath: root + "/a/b/c/d/e/f/g/h/random", contents: Data(random))
        let zeros = open(root + "/zeros", O_CREAT | O_WRONLY, 0o600)
        ftruncate(zeros, 200 << 20)
        close(zeros)
        for i in 0..<5000 {
            _ = FileManager.default.createFile(atPath: root + "/many/entry-with-a-longer-name-\(i)", contents: Data("\(i)".utf8))
        }
        symlink("short", root + "/short-link")
        symlink(String(repeating: "long/", count: 40) + "target", root + "/long-link")
        mknod(root + "/dev/null", S_IFCHR | 0o666, dev_t((1 << 8) | 3))
        mknod(root + "/dev/sda", S_IFBLK | 0o660, dev_t((8 << 8) | 0))
        mknod(root + "/dev/big", S_IFCHR | 0o600, gnuMakedev(300, 70000))
        mkfifo(root + "/dev/fifo", 0o600)
        var bytes = Array((root + "/bad-").utf8) + [0xff, 0xfe, 0x41, 0]
        let fd = bytes.withUnsafeMutableBufferPointer { $0.withMemoryRebound(to: CChar.self) { open($0.baseAddress!, O_CREAT | O_WRONLY, 0o644) } }
        close(fd)
        return root
    }

    static func gnuMakedev(_ major: UInt64, _ minor: UInt64) -> dev_t {
        dev_t((minor & 0xff) | ((major & 0xfff) << 8) | ((minor & ~0xff) << 12) | ((major & ~0xfff) << 32))
    }

    static func writeImage(_ source: TreeSource, to output: String, table: PartitionTable = .none) async throws {
        var w = DiskImageWriter(freeSpaceMiB: 16, label: "test", epoch: epoch)
        w.ext4Writer = .native
        w.partitionTable = table
        try await w.write(source: source, to: output)
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

    @Test func everyEntryTypeIsCleanForE2fsckAndReadsBackWithDebugfs() async throws {
        let tree = try Self.makeTree()
        defer { FS.remove(FS.parent(tree)) }
        let image = tree + "/../native.img"
        try await Self.writeImage(.directory(tree), to: image)
        try await Self.fsck(image)

        let file = try await Self.debugfs(image, "stat /a/file")
        #expect(file.contains("Mode:  04755"), "\(file)")
        #expect(file.contains("User:  1234   Group:  5678"), "\(file)")
        #expect(file.contains("Links: 3"), "\(file)")
        #expect(file.contains("mtime: 0x\(String(Self.epoch, radix: 16))"), "\(file)")
        #expect(file.contains("atime: 0x\(String(Self.epoch, radix: 16))"), "\(file)")
        let inode = { (s: String) in s.split(separator: " ").dropFirst().first.map(String.init) }
        let hardA = try await Self.debugfs(image, "stat /a/b/hard"), hardB = try await Self.debugfs(image, "stat /hard2")
        #expect(inode(file) != nil && inode(file) == inode(hardA) && inode(file) == inode(hardB))
        #expect(try await Self.debugfs(image, "cat /a/b/hard") == "hello\n")

        let dumped = tree + "/../random.out"
        _ = try await Self.debugfs(image, "dump /a/b/c/d/e/f/g/h/random \(dumped)")
        #expect(FileManager.default.contentsEqual(atPath: dumped, andPath: tree + "/a/b/c/d/e/f/g/h/random"))

        let zeros = try await Self.debugfs(image, "stat /zeros")
        #expect(zeros.contains("Size: 209715200"), "\(zeros)")
        #expect(zeros.contains("Blockcount: 409600"), "written dense: \(zeros)")

        #expect(try await Self.debugfs(image, "stat /short-link").contains("Fast link dest: \"short\""))
        let long = try await Self.debugfs(image, "stat /long-link")
        #expect(long.contains("Size: 206") && long.contains("EXTENTS"), "\(long)")
        #expect(try await Self.debugfs(image, "cat /long-link") == String(repeating: "long/", count: 40) + "target")

        #expect(try await Self.debugfs(image, "stat /dev/null").contains("Device major/minor number: 01:03"))
        #expect(try await Self.debugfs(image, "stat /dev/sda").contains("block special"))
        #expect(try await Self.debugfs(image, "stat /dev/big").contains("300:70000"))
        #expect(try await Self.debugfs(image, "stat /dev/fifo").contains("Type: FIFO"))

        let listing = try await Self.debugfs(image, "ls -l /")
        #expect(listing.contains("bad-\\xff\\xfeA"), "\(listing)")
        #expect(listing.contains("lost+found"))
        let many = try await Self.debugfs(image, "ls /many")
        #expect(many.components(separatedBy: "entry-with-a-longer-name-").count - 1 == 5000)
        #expect(try await Self.debugfs(image, "cat /many/entry-with-a-longer-name-4999") == "4999")
        #expect(try await Self.debugfs(image, "stat /a/b/c/d/e/f/g/h").contains("Type: directory"))
        let stats = try await Self.debugfs(image, "stats")
        #expect(stats.contains("has_journal") && stats.contains("Journal inode:            8"), "\(stats)")
        let journal = try await ProcessRunner().capture(ToolCommand("dumpe2fs", ["-h", image])).standardOutput
        #expect(journal.contains("Total journal size:       8M") && journal.contains("Journal start:            0"), "\(journal)")
    }

    @Test func theSameTreeGivesTheSameBytesTwiceAndFromATar() async throws {
        let tree = try Self.makeTree()
        defer { FS.remove(FS.parent(tree)) }
        let work = tree + "/.."
        try await Self.writeImage(.directory(tree), to: work + "/one.img", table: .mbr)
        try await Self.writeImage(.directory(tree), to: work + "/two.img", table: .mbr)
        try TarWriter(compression: .none, epoch: Self.epoch).write(source: .directory(tree), to: work + "/tree.tar")
        try await Self.writeImage(.archive(work + "/tree.tar"), to: work + "/tar.img", table: .mbr)
        #expect(FileManager.default.contentsEqual(atPath: work + "/one.img", andPath: work + "/two.img"))
        #expect(FileManager.default.contentsEqual(atPath: work + "/one.img", andPath: work + "/tar.img"))
        try await Self.fsck(work + "/tar.img?offset=1048576")
        // mke2fs of the same tree differs from ours, so the comparison can fail.
        var mke2fs = DiskImageWriter(freeSpaceMiB: 16, label: "test", epoch: Self.epoch)
        mke2fs.ext4Writer = .mke2fs
        try await mke2fs.write(source: .directory(tree), to: work + "/mke2fs.img")
        #expect(!FileManager.default.contentsEqual(atPath: work + "/one.img", andPath: work + "/mke2fs.img"))
        try await Self.fsck(work + "/mke2fs.img?offset=1048576")
    }

    @Test func theCLIChoosesTheWriterAndRefusesAnUnknownOne() async throws {
        let tree = try Self.makeTree()
        defer { FS.remove(FS.parent(tree)) }
        // The mke2fs path fixes times with debugfs, which cannot address the non-UTF-8 name.
        var badName = Array((tree + "/bad-").utf8) + [0xff, 0xfe, 0x41, 0]
        _ = badName.withUnsafeMutableBufferPointer { $0.withMemoryRebound(to: CChar.self) { unlink($0.baseAddress!) } }
        let work = tree + "/.."
        try TarWriter(compression: .none, epoch: Self.epoch).write(source: .directory(tree), to: work + "/tree.tar")
        let env = ["SOURCE_DATE_EPOCH": String(Self.epoch)]
        let bad = try await Fixtures.rootfs(["image", work + "/tree.tar", "-o", work + "/bad.img", "--ext4-writer", "fast"], environment: env)
        #expect(bad.status != 0)
        #expect(bad.stderr.contains("native") && bad.stderr.contains("mke2fs"), "\(bad.stderr)")
        #expect(!FS.exists(work + "/bad.img"))
        let byDefault = try await Fixtures.rootfs(["image", work + "/tree.tar", "-o", work + "/default.img"], environment: env)
        #expect(byDefault.status == 0, "\(byDefault.stderr)")
        let native = try await Fixtures.rootfs(["image", work + "/tree.tar", "-o", work + "/native.img", "--ext4-writer", "native"], environment: env)
        #expect(native.status == 0, "\(native.stderr)")
        #expect(FileManager.default.contentsEqual(atPath: work + "/default.img", andPath: work + "/native.img"), "native is the default")
        let viaMke2fs = try await Fixtures.rootfs(["image", work + "/tree.tar", "-o", work + "/mke2fs.img", "--ext4-writer", "mke2fs"], environment: env)
        #expect(viaMke2fs.status == 0, "\(viaMke2fs.stderr)")
        try await Self.fsck(work + "/mke2fs.img?offset=1048576")
        #expect(try await Self.debugfs(work + "/mke2fs.img?offset=1048576", "stats").contains("has_journal"))
        #expect(!FileManager.default.contentsEqual(atPath: work + "/default.img", andPath: work + "/mke2fs.img"))
    }

    /// A 2100 MiB file spans backup groups and more than four extents: an extent
    /// leaf block (depth 1). Its zeros are skipped, so the image stays sparse.
    @Test func aLargeFileGetsAnExtentTreeAndKeepsItsContent() async throws {
        let root = try Fixtures.temporaryDirectory("ext4-large") + "/tree"
        defer { FS.remove(FS.parent(root)) }
        try FS.makeDirectories(root)
        let fd = open(root + "/huge", O_CREAT | O_WRONLY, 0o644)
        #expect(ftruncate(fd, 2100 << 20) == 0)
        var chunk = [UInt8](repeating: 0, count: 4096)
        for i in chunk.indices { chunk[i] = UInt8(truncatingIfNeeded: i * 7 + 1) }
        #expect(pwrite(fd, chunk, 4096, off_t(1500) << 20) == 4096)
        close(fd)
        let image = root + "/../large.img"
        try await Self.writeImage(.directory(root), to: image)
        try await Self.fsck(image)
        let info = try await Self.debugfs(image, "stat /huge")
        #expect(info.contains("(ETB0)") && info.contains("Size: 2202009600"), "\(info)")
        let logical = (1500 << 20) / 4096
        let bmap = try await Self.debugfs(image, "bmap /huge \(logical)").trimmingCharacters(in: .whitespacesAndNewlines)
        let physical = try #require(Int64(bmap), "\(bmap)")
        let img = open(image, O_RDONLY)
        defer { close(img) }
        var back = [UInt8](repeating: 0, count: 4096)
        #expect(pread(img, &back, 4096, off_t(physical * 4096)) == 4096)
        #expect(back == chunk)
        var st = stat()
        #expect(lstat(image, &st) == 0 && st.st_blocks * 512 < 64 << 20, "allocated \(st.st_blocks * 512) bytes")
    }

    /// An ordinary user (nobody, via setpriv) writes the image from a tar: owners,
    /// setuid bits and devices come from the tar, the bytes equal root's image.
    @Test func anOrdinaryUserWritesTheSameImageFromATar() async throws {
        let tree = try Self.makeTree()
        defer { FS.remove(FS.parent(tree)) }
        let work = FS.parent(tree)
        chmod(work, 0o777)
        try TarWriter(compression: .none, epoch: Self.epoch).write(source: .directory(tree), to: work + "/tree.tar")
        chmod(work + "/tree.tar", 0o644)
        let env = ["SOURCE_DATE_EPOCH": String(Self.epoch)]
        let asRoot = try await Fixtures.rootfs(["image", work + "/tree.tar", "-o", work + "/root.img"], environment: env)
        #expect(asRoot.status == 0, "\(asRoot.stderr)")
        try await ProcessRunner().capture(ToolCommand("setpriv", [
            "--reuid=65534", "--regid=65534", "--clear-groups", "env", "SOURCE_DATE_EPOCH=\(Self.epoch)",
            Fixtures.rootfsBinary, "image", work + "/tree.tar", "-o", work + "/nobody.img"]))
        var st = stat()
        #expect(lstat(work + "/nobody.img", &st) == 0 && st.st_uid == 65534)
        #expect(FileManager.default.contentsEqual(atPath: work + "/root.img", andPath: work + "/nobody.img"))
        let file = try await Self.debugfs(work + "/nobody.img?offset=1048576", "stat /a/file")
        #expect(file.contains("Mode:  04755") && file.contains("User:  1234   Group:  5678"), "\(file)")
    }

    @Test func aTreeWhoseLostAndFoundIsAFileIsRefused() async throws {
        let root = try Fixtures.temporaryDirectory("ext4-lpf") + "/tree"
        try FS.makeDirectories(root)
        _ = FileManager.default.createFile(atPath: root + "/lost+found", contents: Data("x".utf8))
        await #expect(throws: RootfsError.self) {
            try await Self.writeImage(.directory(root), to: root + "/../x.img")
        }
        #expect(!FS.exists(root + "/../x.img"))
    }
}

/// The native writer on the real Debian tree: e2fsck clean, every file, link and
/// owner read back with debugfs rdump, and the image boots with `rootfs boot`.
@Suite(.serialized, .requires(.root, .network, .qemu), .tags(.root, .network, .qemu)) struct Ext4DebianTestsRequiringRootNetworkAndQEMU {
    @Test func debianTreeIsCleanReadsBackAndBoots() async throws {
        let tree = try await Fixtures.debian.tree(agentInit: true)
        let work = try Fixtures.temporaryDirectory("ext4-debian")
        defer { FS.remove(work) }
        let image = work + "/debian-native.img"
        let r = try await Fixtures.rootfs(["image", tree.directory, "-o", image, "--ext4-writer", "native"],
                                         environment: ["SOURCE_DATE_EPOCH": "1700000000"])
        #expect(r.status == 0, "\(r.stderr)")
        let fs = image + "?offset=1048576"
        try await Ext4WriterTestsRequiringRoot.fsck(fs)

        let again = work + "/again.img"
        _ = try await Fixtures.rootfs(["image", tree.directory, "-o", again, "--ext4-writer", "native"],
                                      environment: ["SOURCE_DATE_EPOCH": "1700000000"])
        #expect(FileManager.default.contentsEqual(atPath: image, andPath: again))

        let dump = work + "/dump"
        try FS.makeDirectories(dump)
        _ = try await ProcessRunner().capture(ToolCommand("debugfs", ["-R", "rdump / \(dump)", fs]))
        var files = 0, links = 0, special = 0
        var mismatches: [String] = []
        try TreeSource.directory(tree.directory).walk { item in
            guard !item.isRoot else { return }
            let copy = dump + "/" + item.pathString
            var st = stat()
            switch item.fileType {
            case FileType.reg:
                files += 1
                guard lstat(copy, &st) == 0 else { mismatches.append("missing \(item.pathString)"); return }
                // rdump drops setuid/setgid/sticky (chown after chmod): those are checked with stat below.
                if UInt32(st.st_mode) & 0o170777 != item.mode & 0o170777 || st.st_uid != item.uid || st.st_gid != item.gid
                    || st.st_mtim.tv_sec != min(item.mtime, 1_700_000_000) {
                    mismatches.append("metadata of \(item.pathString)")
                }
                if !FileManager.default.contentsEqual(atPath: copy, andPath: tree.directory + "/" + item.pathString) {
                    mismatches.append("content of \(item.pathString)")
                }
            case FileType.lnk:
                links += 1
                let target = try? FileManager.default.destinationOfSymbolicLink(atPath: copy)
                if target.map({ Array($0.utf8) }) != item.linkTarget { mismatches.append("link \(item.pathString)") }
            case FileType.dir:
                guard lstat(copy, &st) == 0, UInt32(st.st_mode) & 0o170777 == item.mode & 0o170777 else {
                    mismatches.append("directory \(item.pathString)")
                    return
                }
            default:
                let stat = try debugfsStat(fs, item.pathString)
                if !stat.contains("User:     \(item.uid)") { mismatches.append("special \(item.pathString)") }
            }
            if item.mode & 0o7000 != 0 {
                special += 1
                let stat = try debugfsStat(fs, item.pathString)
                if !stat.contains("Mode:  0" + String(item.mode & 0o7777, radix: 8)) { mismatches.append("mode of \(item.pathString)") }
            }
        }
        #expect(special > 5, "setuid/setgid/sticky entries: \(special)")
        #expect(files > 1000 && links > 100, "files \(files), links \(links)")
        #expect(mismatches.isEmpty, "\(mismatches.prefix(20))")

        let kernel = try await BootFixture.kernel(packageRoot: URL(fileURLWithPath: Fixtures.repositoryRoot))
        let boot = try await Fixtures.rootfs(["boot", image, "--kernel", kernel, "--timeout", "300", "--", "cat", "/etc/os-release"])
        #expect(boot.status == 0, "\(boot.stderr.suffix(3000))")
        #expect(boot.stdout.contains("ID=debian"), "\(boot.stdout)")
        // The guest mounts it read-write with the journal (ordered data mode) and
        // writes (to QEMU's -snapshot overlay: the image itself stays as written).
        let write = try await Fixtures.rootfs(["boot", image, "--kernel", kernel, "--timeout", "300", "--", "sh", "-c",
                                               "echo written > /root/probe && sync && cat /root/probe && dmesg | grep -c 'EXT4-fs.*mounted filesystem with ordered data mode'"])
        #expect(write.status == 0 && write.stdout == "written\n1\n", "\(write.stdout) \(write.stderr.suffix(2000))")
    }
}

/// debugfs stat from a synchronous walk callback.
private func debugfsStat(_ image: String, _ path: String) throws -> String {
    let p = Process()
    p.executableURL = URL(fileURLWithPath: "/usr/sbin/debugfs")
    p.arguments = ["-R", "stat /\(path)", image]
    let out = Pipe()
    p.standardOutput = out
    p.standardError = FileHandle.nullDevice
    try p.run()
    let data = out.fileHandleForReading.readDataToEndOfFile()
    p.waitUntilExit()
    return String(decoding: data, as: UTF8.self)
}
