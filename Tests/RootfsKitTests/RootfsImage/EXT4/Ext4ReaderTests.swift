import Foundation
import Testing
@testable import RootfsKit
@testable import RootfsImage
@testable import RootfsSupport

/// The typed ext4 structures and the in-process reader, each checked against
/// tools that did not write the image: dumpe2fs and debugfs read the same bytes
/// the structures decode; e2fsck -fn judges every image; `mke2fs -d` (Debian's
/// defaults: 64bit, metadata_csum...) writes the images the reader must read
/// besides our own writer's. Root: the trees hold devices and foreign owners.
@Suite(.serialized, .requires(.root), .tags(.root)) struct Ext4ReaderTestsRequiringRoot {
    static let epoch = 1_700_000_000
    /// Every time in the tree, before the epoch, so clamping changes nothing and times must read back exactly.
    static let treeTime = 1_600_000_000

    /// Every kind of entry: files (empty, random, setuid with a foreign owner), three
    /// names of one file, short, long (206 bytes) and very long (4000 bytes) symlinks,
    /// a target with spaces, devices (old and new encodings), a fifo, a socket, a
    /// non-UTF-8 name, a newline name, a 5000-entry directory, an init and agent (so
    /// the CLI takes the directory).
    static func makeTree(_ root: String) async throws {
        try FS.makeDirectories(root + "/a/b/c/d")
        try FS.makeDirectories(root + "/many")
        try FS.makeDirectories(root + "/dev")
        try FS.makeDirectories(root + "/sbin")
        try FS.makeDirectories(root + "/usr/bin")
        try "#!/bin/sh\n".write(toFile: root + "/sbin/init", atomically: false, encoding: .utf8)
        chmod(root + "/sbin/init", 0o755)
        link(root + "/sbin/init", root + "/usr/bin/rootfs-agent")
        try "hello\n".write(toFile: root + "/a/file", atomically: false, encoding: .utf8)
        chown(root + "/a/file", 1234, 5678)
        chmod(root + "/a/file", 0o4755)
        link(root + "/a/file", root + "/a/b/hard")
        link(root + "/a/file", root + "/hard2")
        _ = FileManager.default.createFile(atPath: root + "/empty", contents: Data())
        var random = [UInt8](repeating: 0, count: 300_001)
        for i in random.indices { random[i] = UInt8(truncatingIfNeeded: i &* 2654435761 >> 13) }
        _ = FileManager.default.createFile(atPath: root + "/a/b/c/d/random", contents: Data(random))
        for i in 0..<5000 {
            _ = FileManager.default.createFile(atPath: root + "/many/entry-with-a-longer-name-\(i)", contents: Data("\(i)".utf8))
        }
        symlink("short", root + "/short-link")
        symlink(String(repeating: "long/", count: 40) + "target", root + "/long-link")
        symlink(String(repeating: "x", count: 4000), root + "/longest-link")
        symlink("a target/with spaces", root + "/spaced-link")
        mknod(root + "/dev/null", S_IFCHR | 0o666, dev_t((1 << 8) | 3))
        mknod(root + "/dev/sda", S_IFBLK | 0o660, dev_t(8 << 8))
        mknod(root + "/dev/big", S_IFCHR | 0o600, Ext4WriterTestsRequiringRoot.gnuMakedev(300, 70000))
        mkfifo(root + "/dev/fifo", 0o600)
        try "nl".write(toFile: root + "/a/new\nline", atomically: false, encoding: .utf8)
        let raw: [UInt8] = Array((root + "/bad-").utf8) + [0xff, 0xfe, 0x41, 0]
        let fd = raw.withUnsafeBufferPointer { open(UnsafeRawPointer($0.baseAddress!).assumingMemoryBound(to: CChar.self), O_CREAT | O_WRONLY, 0o644) }
        close(fd)
        let sock = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0)
        var address = sockaddr_un()
        address.sun_family = sa_family_t(AF_UNIX)
        let path = Array((root + "/a/socket").utf8CString)
        withUnsafeMutableBytes(of: &address.sun_path) { buf in for (i, c) in path.enumerated() where i < buf.count { buf[i] = UInt8(bitPattern: c) } }
        _ = withUnsafePointer(to: &address) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(sock, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) } }
        close(sock)
        try await setTimes(root)
    }

    static func setTimes(_ root: String) async throws {
        let touched = try await Fixtures.run("/usr/bin/find", [root, "-exec", "touch", "-h", "-d", "@\(treeTime)", "{}", "+"])
        #expect(touched.status == 0, "\(touched.stderr)")
    }

    static func run(_ tool: String, _ arguments: [String]) async throws -> String {
        try await ProcessRunner().capture(ToolCommand(tool, arguments)).standardOutput
    }

    static func fsck(_ image: String) async throws {
        do {
            _ = try await ProcessRunner().capture(ToolCommand("e2fsck", ["-fn", image]))
        } catch let failure as ToolFailure {
            Issue.record("e2fsck -fn \(image) exited \(failure.status): \(failure.outputTail.joined(separator: "\n"))")
        }
    }

    /// `mke2fs -d` with Debian 12's defaults (/etc/mke2fs.conf: 64bit, metadata_csum, huge_file...).
    static func mke2fs(_ tree: String, _ image: String, size: String = "600M") async throws {
        _ = try await run("mke2fs", ["-q", "-F", "-t", "ext4", "-d", tree, image, size])
    }

    /// `rootfs diff A B` through the CLI: its output lines (the differences).
    static func diff(_ a: String, _ b: String) async throws -> [String] {
        let result = try await Fixtures.rootfs(["diff", a, b])
        #expect(result.status == 0 || result.status == 1, "diff exited \(result.status): \(result.stderr)")
        return result.stdout.split(separator: "\n").map(String.init)
    }

    /// "Key: value" lines of dumpe2fs -h.
    static func dumpe2fs(_ image: String) async throws -> [String: String] {
        var fields: [String: String] = [:]
        for line in try await run("dumpe2fs", ["-h", image]).split(separator: "\n") {
            guard let colon = line.firstIndex(of: ":") else { continue }
            fields[String(line[..<colon])] = line[line.index(after: colon)...].trimmingCharacters(in: .whitespaces)
        }
        return fields
    }

    /// Where debugfs says an inode is (imap): its byte offset in the image.
    static func inodeOffset(_ image: String, _ path: String, blockSize: Int64 = 4096) async throws -> Int64 {
        let imap = try await run("debugfs", ["-R", "imap \(path)", image])
        let words = imap.split(whereSeparator: { $0 == " " || $0 == "\n" || $0 == "," || $0 == "\t" })
        let block = try #require(words.lastIndex(of: "block").flatMap { Int64(words[$0 + 1]) }, "\(imap)")
        let offset = try #require(words.firstIndex(of: "offset").flatMap { Int64(words[$0 + 1].dropFirst(2), radix: 16) }, "\(imap)")
        return block * blockSize + offset
    }

    static func readBytes(_ path: String, at offset: Int64, count: Int) throws -> [UInt8] {
        let file = try OwnedFileDescriptor(path: path, flags: O_RDONLY)
        return try file.read(count: count, at: offset)
    }

    static func uuidText(_ b: [UInt8]) -> String {
        let h = b.map { String(format: "%02x", $0) }.joined()
        let c = Array(h)
        return String(c[0..<8]) + "-" + String(c[8..<12]) + "-" + String(c[12..<16]) + "-" + String(c[16..<20]) + "-" + String(c[20..<32])
    }

    // MARK: the structures against dumpe2fs and debugfs

    /// The superblock, group descriptors, inodes, extent roots and journal
    /// superblock decoded from images of both writers equal what dumpe2fs and
    /// debugfs print, and each structure encodes back to the very bytes on disk
    /// (the writer's bytes are those encoders' output).
    @Test func theStructuresSayWhatDumpe2fsAndDebugfsRead() async throws {
        let dir = try Fixtures.temporaryDirectory("ext4-structures")
        defer { FS.remove(dir) }
        let tree = dir + "/tree"
        try await Self.makeTree(tree)
        let made = try await Fixtures.rootfs(["image", tree, "-o", dir + "/native.img", "--no-partition-table", "--free-space", "300"],
                                             environment: ["SOURCE_DATE_EPOCH": String(Self.epoch)])
        #expect(made.status == 0, "\(made.stderr)")
        try await Self.mke2fs(tree, dir + "/mke2fs.img")
        for image in [dir + "/native.img", dir + "/mke2fs.img"] {
            try await Self.fsck(image)
            let raw = try Self.readBytes(image, at: 1024, count: 1024)
            let sb = try Ext4Superblock.decode(from: BinaryDecoder(raw, what: "superblock"))
            // Our writer's structures are all modelled: they encode back to the very bytes (mke2fs sets more fields).
            let ours = image.hasSuffix("native.img")
            let sameSuperblock = sb.encode() == raw
            #expect(sameSuperblock || !ours, "\(image): the superblock encodes back to other bytes")
            let f = try await Self.dumpe2fs(image)
            #expect(f["Inode count"] == String(sb.inodesCount))
            #expect(f["Block count"] == String(sb.blocksCount))
            #expect(f["Free blocks"] == String(sb.freeBlocksCount))
            #expect(f["Free inodes"] == String(sb.freeInodesCount))
            #expect(f["First block"] == String(sb.firstDataBlock))
            #expect(f["Block size"] == String(sb.blockSize))
            #expect(f["Blocks per group"] == String(sb.blocksPerGroup))
            #expect(f["Inodes per group"] == String(sb.inodesPerGroup))
            #expect(f["Inode size"] == String(sb.inodeSize))
            #expect(f["First inode"] == String(sb.firstInode))
            #expect(f["Journal inode"] == String(sb.journalInode))
            #expect(f["Required extra isize"] == String(sb.minExtraIsize))
            #expect(f["Filesystem UUID"] == Self.uuidText(sb.uuid))
            #expect(f["Directory Hash Seed"] == Self.uuidText(sb.hashSeed))
            #expect(f["Flex block group size"] == String(1 << sb.logGroupsPerFlex))
            let features = Set((f["Filesystem features"] ?? "").split(separator: " ").map(String.init))
            #expect(features.contains("64bit") == sb.is64bit)
            #expect(features.contains("metadata_csum") == (sb.featureRoCompat & Ext4Feature.roCompatMetadataCsum != 0))
            #expect(features.contains("has_journal") == (sb.featureCompat & Ext4Feature.compatHasJournal != 0))
            #expect(features.contains("flex_bg") && features.contains("extent") && features.contains("filetype"))

            // Group descriptors against dumpe2fs's group listing.
            let size = sb.is64bit ? Int(sb.descriptorSize) : 32
            let groups = Int((sb.blocksCount + UInt64(sb.blocksPerGroup) - 1) / UInt64(sb.blocksPerGroup))
            let gdt = try Self.readBytes(image, at: Int64(sb.blockSize), count: groups * size)
            let listing = try await Self.run("dumpe2fs", [image])
            for g in 0..<groups {
                let d = try Ext4GroupDescriptor.decode(from: BinaryDecoder(gdt, what: "gdt"), at: g * size, size: size)
                let sameDescriptor = d.encode(size: size) == Array(gdt[(g * size)..<((g + 1) * size)])
                #expect(sameDescriptor || !ours, "descriptor \(g)")
                let section = listing.components(separatedBy: "Group \(g): ").dropFirst().first ?? ""
                #expect(section.contains("Block bitmap at \(d.blockBitmap) "), "group \(g): \(section.prefix(300))")
                #expect(section.contains("Inode bitmap at \(d.inodeBitmap) "), "group \(g)")
                #expect(section.contains("Inode table at \(d.inodeTable)-"), "group \(g)")
                #expect(section.contains("\(d.freeBlocksCount) free blocks, \(d.freeInodesCount) free inodes, \(d.usedDirsCount) directories"), "group \(g): \(section.prefix(400))")
            }

            // Inodes, located by debugfs (imap), decoded here, compared with debugfs stat.
            for path in ["/", "/a/file", "/a/b/c/d/random", "/many", "/long-link", "/short-link", "/dev/big", "/dev/sda", "<8>"] {
                let at = try await Self.inodeOffset(image, path, blockSize: Int64(sb.blockSize))
                let bytes = try Self.readBytes(image, at: at, count: Int(sb.inodeSize))
                let inode = try Ext4Inode.decode(from: BinaryDecoder(bytes, what: path), size: Int(sb.inodeSize))
                let sameInode = inode.encode(size: Int(sb.inodeSize)) == bytes
                #expect(sameInode || !ours, "\(image) \(path): the inode encodes back to other bytes")
                let stat = try await Self.run("debugfs", ["-R", "stat \(path)", image])
                #expect(stat.contains("Mode:  0" + String(format: "%03o", UInt32(inode.mode) & 0o7777)), "\(path): \(stat)")
                #expect(stat.contains(String(format: "User: %5d   Group: %5d", inode.uid, inode.gid)), "\(path): \(stat)")
                #expect(stat.contains("Size: \(inode.size)\n"), "\(path): \(stat)")
                #expect(stat.contains("Links: \(inode.linksCount) "), "\(path): \(stat)")
                #expect(stat.contains(String(format: "mtime: 0x%08x", inode.mtime.low)), "\(path): \(stat)")
                if inode.fileType == FileType.chr || inode.fileType == FileType.blk {
                    let (major, minor) = inode.device
                    #expect(stat.contains(major < 256 && minor < 256 ? String(format: "%02d:%02d", major, minor) : "\(major):\(minor)"), "\(path): \(stat)")
                }
                guard inode.flags & Ext4Inode.flagExtents != 0 else { continue }
                let (header, node) = try Ext4ExtentNode.decode(from: BinaryDecoder(inode.block, what: path), size: 60, depth: nil)
                if case .leaves(let extents) = node {
                    for x in extents {
                        let logical = x.length == 1 ? "(\(x.block))" : "(\(x.block)-\(x.block + x.length - 1))"
                        let physical = x.length == 1 ? "\(x.start)" : "\(x.start)-\(x.start + UInt64(x.length) - 1)"
                        #expect(stat.contains(logical + ":" + physical), "\(path): \(logical):\(physical) in \(stat)")
                    }
                } else {
                    #expect(header.depth > 0 && stat.contains("(ETB0)"))
                }
                if path == "<8>" {
                    // The journal superblock in the journal's first block, against dumpe2fs's journal fields.
                    guard case .leaves(let extents) = node, let first = extents.first else { Issue.record("journal extents"); continue }
                    let jbytes = try Self.readBytes(image, at: Int64(first.start) * Int64(sb.blockSize), count: 1024)
                    let j = try Ext4JournalSuperblock.decode(from: jbytes, what: "journal")
                    #expect(j.magic == Ext4JournalSuperblock.magic)
                    #expect(f["Total journal blocks"] == String(j.maxLength))
                    #expect(f["Journal sequence"] == String(format: "0x%08x", j.sequence))
                    #expect(f["Journal start"] == String(j.start))
                    let sameJournal = j.encode(size: 1024) == jbytes
                    #expect(sameJournal || !ours, "the journal superblock encodes back to other bytes")
                }
            }
        }
    }

    // MARK: the reader

    /// The same tree written by our writer (bare, MBR, GPT) and by mke2fs -d (also
    /// htree-indexed by e2fsck -D), read back by `rootfs diff TREE IMAGE`: entry for
    /// entry equal (type, mode, owner, size, mtime, link target, hard link, device,
    /// content sha256) but for the root's mtime, which mke2fs -d does not copy (the
    /// lost+found both writers add is ext4's own: `diff` leaves it out on the ext4 side).
    @Test func everyEntryReadsBackFromBothWritersThroughRootfsDiff() async throws {
        let dir = try Fixtures.temporaryDirectory("ext4-reader")
        defer { FS.remove(dir) }
        let tree = dir + "/tree"
        try await Self.makeTree(tree)
        let env = ["SOURCE_DATE_EPOCH": String(Self.epoch)]
        for (name, flags) in [("bare", ["--no-partition-table"]), ("mbr", []), ("gpt", ["--partition-table", "gpt"])] {
            let image = dir + "/native-\(name).img"
            let made = try await Fixtures.rootfs(["image", tree, "-o", image] + flags, environment: env)
            #expect(made.status == 0, "\(made.stderr)")
            try await Self.fsck(image + (name == "bare" ? "" : "?offset=1048576"))
            #expect(try await Self.diff(tree, image) == [], "\(name)")
        }

        let mke2fs = dir + "/mke2fs.img"
        try await Self.mke2fs(tree, mke2fs)
        try await Self.fsck(mke2fs)
        let features = try await Self.dumpe2fs(mke2fs)["Filesystem features"] ?? ""
        #expect(features.contains("64bit") && features.contains("metadata_csum") && features.contains("huge_file"), "\(features)")
        let differences = try await Self.diff(tree, mke2fs)
        #expect(differences.count == 1
                && differences.contains { $0.hasPrefix("changed: /: mtime: \(Self.treeTime) -> ") }, "\(differences)")

        // e2fsck -D indexes every directory: /many becomes an htree (INDEX_FL).
        let indexed = dir + "/indexed.img"
        try FS.copyFile(mke2fs, to: indexed)
        _ = try? await Self.run("e2fsck", ["-fyD", indexed])
        try await Self.fsck(indexed)
        let many = try await Self.run("debugfs", ["-R", "stat /many", indexed])
        let flags = many.split(separator: "\n").first { $0.contains("Flags: 0x") }.flatMap { UInt32($0.components(separatedBy: "Flags: 0x")[1].prefix { $0.isHexDigit }, radix: 16) }
        #expect((flags ?? 0) & Ext4Inode.flagIndex != 0, "\(many)")
        #expect(try await Self.run("debugfs", ["-R", "htree /many", indexed]).contains("Root node dump"))
        #expect(try await Self.diff(tree, indexed) == differences)

        // The image is a tree source for every command: a tar written from it equals the tree.
        let tar = try await Fixtures.rootfs(["image", dir + "/native-mbr.img", "-o", dir + "/back.tar"], environment: env)
        #expect(tar.status != 0 && tar.stderr.contains("socket"), "a tar cannot hold the socket: \(tar.stderr)")
    }

    /// A 2 GiB sparse file with data at the start, across the 1 GiB boundary and at
    /// the end: our writer gives it an extent index node (depth 1), mke2fs -d holes.
    /// Read back byte for byte; an extent marked unwritten reads as zeros, as debugfs reads it.
    @Test func aSparse2GiBFileAndUnwrittenExtentsReadBackByteForByte() async throws {
        let dir = try Fixtures.temporaryDirectory("ext4-sparse")
        defer { FS.remove(dir) }
        let tree = dir + "/tree"
        try FS.makeDirectories(tree)
        let fd = open(tree + "/huge", O_CREAT | O_WRONLY, 0o644)
        #expect(ftruncate(fd, 2 << 30) == 0)
        for (offset, text) in [(Int64(0), "head"), (Int64(1 << 30) - 2, "middle"), (Int64(2 << 30) - 4, "tail")] {
            #expect(pwrite(fd, text, text.utf8.count, off_t(offset)) == text.utf8.count)
        }
        close(fd)
        _ = FileManager.default.createFile(atPath: tree + "/data", contents: Data(repeating: 0xAA, count: 8192))
        let native = dir + "/native.img"
        var writer = DiskImageWriter(freeSpaceMiB: 16, label: "test", epoch: Self.epoch)
        writer.partitionTable = .none
        try await writer.write(source: .directory(tree), to: native)
        let mke2fs = dir + "/mke2fs.img"
        try await Self.mke2fs(tree, mke2fs, size: "64M")
        #expect(try await Self.run("debugfs", ["-R", "stat /huge", native]).contains("(ETB0)"), "an index node")
        let holes = try await Self.run("debugfs", ["-R", "stat /huge", mke2fs])
        let sectors = holes.components(separatedBy: "Blockcount: ").dropFirst().first.flatMap { Int($0.prefix { $0.isNumber }) }
        #expect((sectors ?? .max) < 1000, "mke2fs -d keeps the holes: \(holes)")
        let host = try OwnedFileDescriptor(path: tree + "/huge", flags: O_RDONLY)
        for image in [native, mke2fs] {
            try await Self.fsck(image)
            var compared: Int64 = 0
            let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: 8 << 20, alignment: 4096)
            defer { buffer.deallocate() }
            try TreeSource.ext4(path: image, offset: 0).walk { item in
                guard item.path == Array("huge".utf8) else { return }
                #expect(item.size == 2 << 30)
                try item.copyContent(buffer: buffer) { chunk in
                    let expected = try host.read(count: chunk.count, at: compared)
                    // memcmp: a byte loop in the unoptimized test build takes minutes for 2 GiB.
                    let same = expected.count == chunk.count && expected.withUnsafeBytes { memcmp($0.baseAddress!, chunk.baseAddress!, chunk.count) } == 0
                    if !same { Issue.record("\(image): content differs in the chunk at \(compared)") }
                    compared += Int64(chunk.count)
                }
            }
            #expect(compared == 2 << 30, "\(image)")
        }

        // Mark /data's extent unwritten (our image has no checksums to recompute).
        let at = try await Self.inodeOffset(native, "/data")
        var inode = try Ext4Inode.decode(from: BinaryDecoder(try Self.readBytes(native, at: at, count: 256), what: "/data"))
        guard case .leaves(var extents) = try Ext4ExtentNode.decode(from: BinaryDecoder(inode.block, what: "/data"), size: 60, depth: 0).1 else {
            Issue.record("/data has no leaf root"); return
        }
        extents[0].unwritten = true
        inode.block = Ext4ExtentNode.leaves(extents).encode(size: 60)
        try OwnedFileDescriptor(path: native, flags: O_WRONLY).writeAll(inode.encode(), at: at)
        try await Self.fsck(native)
        #expect(try await Self.run("debugfs", ["-R", "stat /data", native]).contains("[u]"))
        let dumped = dir + "/data.out"
        _ = try await Self.run("debugfs", ["-R", "dump /data \(dumped)", native])
        #expect(FileManager.default.contents(atPath: dumped) == Data(count: 8192), "debugfs reads the unwritten extent as zeros")
        var content: [UInt8]?
        let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: 1 << 16, alignment: 4096)
        defer { buffer.deallocate() }
        try TreeSource.ext4(path: native, offset: 0).walk { item in
            guard item.path == Array("data".utf8) else { return }
            var bytes: [UInt8] = []
            try item.copyContent(buffer: buffer) { bytes += $0 }
            content = bytes
        }
        #expect(content == [UInt8](repeating: 0, count: 8192), "the reader reads the unwritten extent as zeros")
    }

    // MARK: hostile images

    /// Walks the whole tree reading up to 16 MiB of every file: the error, if any.
    static func readAll(_ image: String, offset: Int64 = 0) -> Error? {
        let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: 1 << 20, alignment: 4096)
        defer { buffer.deallocate() }
        do {
            try TreeSource.ext4(path: image, offset: offset).walk { item in
                var read = 0
                while read < 16 << 20, let n = try item.readContent?(buffer), n > 0 { read += n }
            }
            return nil
        } catch {
            return error
        }
    }

    static func patch(_ image: String, at offset: Int64, _ bytes: [UInt8]) throws {
        try OwnedFileDescriptor(path: image, flags: O_WRONLY).writeAll(bytes, at: offset)
    }

    /// An extent past the end, a directory loop, a bad extent magic, a depth of 6,
    /// a truncated image and hundreds of random byte flips in the superblock, group
    /// descriptors, inode table, directory and extent blocks of both writers'
    /// images: each a RootfsError or a clean read, never a trap, each in bounded time.
    @Test func corruptedImagesGiveErrorsNeverTrapsOrHangs() async throws {
        let dir = try Fixtures.temporaryDirectory("ext4-hostile")
        defer { FS.remove(dir) }
        let tree = dir + "/tree"
        try FS.makeDirectories(tree + "/a/b")
        for i in 0..<300 { try "file \(i)\n".write(toFile: tree + "/a/f\(i)", atomically: false, encoding: .utf8) }
        _ = FileManager.default.createFile(atPath: tree + "/a/b/data", contents: Data(repeating: 0x5A, count: 3 << 20))
        symlink(String(repeating: "t", count: 100), tree + "/a/link")
        let fd = open(tree + "/big", O_CREAT | O_WRONLY, 0o644)
        ftruncate(fd, 600 << 20)                  // more than four extents: an extent leaf block
        close(fd)
        let native = dir + "/native.img"
        var writer = DiskImageWriter(freeSpaceMiB: 4, label: "test", epoch: Self.epoch)
        writer.partitionTable = .none
        try await writer.write(source: .directory(tree), to: native)
        let mke2fs = dir + "/mke2fs.img"
        try await Self.mke2fs(tree, mke2fs, size: "64M")
        #expect(Self.readAll(native) == nil && Self.readAll(mke2fs) == nil, "the intact images read")

        func expectError(_ image: String, _ needle: String) {
            let error = Self.readAll(image)
            #expect(error is RootfsError && "\(error!)".contains(needle), "\(needle): \(String(describing: error))")
        }

        // An extent past the end of the file system.
        let data = try await Self.inodeOffset(native, "/a/b/data")
        let pristine = try Self.readBytes(native, at: data, count: 256)
        var inode = try Ext4Inode.decode(from: BinaryDecoder(try Self.readBytes(native, at: data, count: 256), what: "data"))
        guard case .leaves(var extents) = try Ext4ExtentNode.decode(from: BinaryDecoder(inode.block, what: "data"), size: 60, depth: 0).1 else { return }
        extents[0].start = 1 << 40
        inode.block = Ext4ExtentNode.leaves(extents).encode(size: 60)
        try Self.patch(native, at: data, inode.encode())
        expectError(native, "past the end of the file system")
        // A bad magic, then a depth of 6.
        var header = inode
        header.block = [0x0B, 0xF3] + Array(inode.block[2...])
        try Self.patch(native, at: data, header.encode())
        expectError(native, "not an extent tree node")
        header.block = Ext4ExtentHeader(entries: 1, max: 4, depth: 6).encode() + Array(inode.block[12...])
        try Self.patch(native, at: data, header.encode())
        expectError(native, "depth 6")
        try Self.patch(native, at: data, pristine)
        #expect(Self.readAll(native) == nil, "restored")

        // A directory loop: debugfs links /a into /a/b.
        let loop = dir + "/loop.img"
        try FS.copyFile(native, to: loop)
        _ = try await Self.run("debugfs", ["-w", "-R", "ln /a /a/b/loop", loop])
        expectError(loop, "a second time")

        // A truncated image.
        let cut = dir + "/cut.img"
        try FS.copyFile(native, to: cut)
        #expect(truncate(cut, off_t(FS.fileSize(cut) - 4096)) == 0)
        expectError(cut, "truncated")

        // Random flips, each region of both images.
        var generator = SystemRandomNumberGenerator()
        for image in [native, mke2fs] {
            let sb = try Ext4Superblock.decode(from: BinaryDecoder(try Self.readBytes(image, at: 1024, count: 1024), what: "sb"))
            // mke2fs makes a 64 MiB file system with 1 KiB blocks: every offset in blocks of the image's size.
            let bs = Int64(sb.blockSize)
            let gdtAt = (Int64(sb.firstDataBlock) + 1) * bs
            let gd = try Ext4GroupDescriptor.decode(from: BinaryDecoder(try Self.readBytes(image, at: gdtAt, count: 64), what: "gd"), at: 0, size: sb.is64bit ? 64 : 32)
            let rootBlocks = try await Self.run("debugfs", ["-R", "blocks /a", image]).split(separator: " ").compactMap { Int64($0.trimmingCharacters(in: .whitespacesAndNewlines)) }
            let bigStat = try await Self.run("debugfs", ["-R", "stat /big", image])
            var regions: [(String, Int64, Int)] = [("superblock", 1024, 1024), ("group descriptors", gdtAt, 256),
                                                   ("inode table", Int64(gd.inodeTable) * bs, 40 * Int(sb.inodeSize))]
            for b in rootBlocks { regions.append(("directory block", b * bs, Int(bs))) }
            if let etb = bigStat.components(separatedBy: "(ETB0):").dropFirst().first.flatMap({ Int64($0.prefix { $0.isNumber }) }) {
                regions.append(("extent leaf", etb * bs, Int(bs)))
            }
            var errors = 0, checksumErrors = 0
            for round in 0..<240 {
                let (what, start, length) = regions[round % regions.count]
                var changed: [(Int64, UInt8)] = []
                for _ in 0..<Int.random(in: 1...6, using: &generator) {
                    let at = start + Int64.random(in: 0..<Int64(length), using: &generator)
                    let before = try #require(try Self.readBytes(image, at: at, count: 1).first, "\(what) at \(at) in \(regions)")
                    changed.append((at, before))
                    try Self.patch(image, at: at, [UInt8.random(in: 0...255, using: &generator)])
                }
                let began = Date()
                let error = Self.readAll(image)
                let seconds = Date().timeIntervalSince(began)
                #expect(seconds < 20, "\(image) \(what) round \(round): \(seconds) s")
                if let error {
                    #expect(error is RootfsError, "\(what): \(error)")
                    errors += 1
                    if "\(error)".contains("checksum") { checksumErrors += 1 }
                }
                for (at, byte) in changed.reversed() { try Self.patch(image, at: at, [byte]) }
            }
            #expect(errors > 20, "\(image): only \(errors) of 240 corruptions were noticed")
            if image == mke2fs { #expect(checksumErrors > 0, "metadata_csum catches corruption") }
            #expect(Self.readAll(image) == nil, "restored")
        }
    }
}
