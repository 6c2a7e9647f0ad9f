import RootfsSupport
import Foundation

/// Which program writes the ext4 file system of disk images.
public enum Ext4WriterKind: String, Sendable, CaseIterable, Codable {
    /// rootfs's own writer (Ext4Writer): contiguous files, big sequential writes, every field reproducible.
    case native
    /// `mke2fs -d` of e2fsprogs.
    case mke2fs
}

/// Writes an ext4 file system from a TreeSource straight into a file at a
/// byte offset, without mounting, privileges or extraction.
///
/// Layout (4 KiB blocks, 32768 blocks per group, 256-byte inodes): features
/// filetype, extents, flex_bg, sparse_super, large_file, dir_nlink,
/// extra_isize; no journal, no metadata_csum, no htree, no extended
/// attributes. All bitmaps and inode tables sit after the group-0 descriptors,
/// then the directory blocks, long symlink targets and file data, each file
/// contiguous, in walk order. Inode numbers follow the walk order (root 2,
/// lost+found 11, the rest from 12). Every time stamp is the item's mtime,
/// clamped to SOURCE_DATE_EPOCH; the UUID and hash seed are given by the caller.
///
/// Two passes over the source: one to size and lay out, one to copy file data.
/// The region written must read as zeros beforehand (a fresh, truncated file):
/// all-zero data is skipped, so the image stays sparse.
public struct Ext4Writer {
    public var label: String
    public var uuid: [UInt8]
    public var epoch: Int?
    public var freeSpaceMiB: Int
    /// Write an empty jbd2 journal (inode 8): 8 MiB under 512 MiB of data and free space, else 32 MiB.
    public var journal = true

    static let blockSize = 4096
    static let blocksPerGroup = 32768
    static let inodeSize = 256
    static let maxExtentLength = 32768
    static let extentsPerLeaf = (4096 - 12) / 12

    public init(label: String, uuid: [UInt8], epoch: Int?, freeSpaceMiB: Int) {
        self.label = label
        self.uuid = uuid
        self.epoch = epoch
        self.freeSpaceMiB = freeSpaceMiB
    }

    /// Parses "xxxxxxxx-xxxx-..." into 16 bytes.
    public static func uuidBytes(_ text: String) -> [UInt8] {
        let hex = Array(text.replacingOccurrences(of: "-", with: "").utf8)
        var out: [UInt8] = []
        var i = 0
        while i + 1 < hex.count && out.count < 16 {
            out.append(UInt8(String(decoding: hex[i...i + 1], as: UTF8.self), radix: 16) ?? 0)
            i += 2
        }
        return out + [UInt8](repeating: 0, count: 16 - out.count)
    }

    /// Reads the tree and computes the layout: the file system size is `plan.filesystemBytes`.
    public func plan(source: TreeSource) throws -> Ext4Plan {
        var p = Ext4Plan()
        try p.read(source: source, epoch: epoch)
        guard freeSpaceMiB >= 0 else { throw RootfsError("--free-space \(freeSpaceMiB) is negative", hint: "give the free space in MiB (0 or more)") }
        let free = try Checked.multiply(Int64(freeSpaceMiB), 256, "--free-space \(freeSpaceMiB) MiB in 4 KiB blocks")
        let data = try p.nodes.reduce(Int64(0)) { try Checked.add($0, $1.dataBlocks, "the blocks of the tree") }
        let sized = try Checked.add(data, free, "the blocks of the tree and the free space")
        try p.layout(freeBlocks: free, journalBlocks: journal ? (sized < 131072 ? 2048 : 8192) : 0)
        return p
    }

    /// Writes the planned file system into `fd` at `offset` (a second pass over the source for file data).
    public func write(plan: Ext4Plan, source: TreeSource, fd: Int32, offset: Int64, name: String) throws {
        let copy = dup(fd)
        guard copy >= 0 else { throw RootfsError("cannot write \(name): \(FS.errnoText())") }
        let out = BlockStream(output: OwnedFileDescriptor(taking: copy, name: name), base: offset)
        defer { out.release() }
        try plan.writeData(source: source, to: out)
        try plan.writeMetadata(to: out, label: label, uuid: uuid, time: epoch ?? Int(time(nil)))
        try out.flush()
    }
}

/// One physically contiguous piece of an inode's data.
struct Ext4Run {
    var logical: UInt32
    var physical: UInt32
    var length: UInt32
}

struct Ext4Entry {
    var name: [UInt8]
    var ino: UInt32
    var type: UInt8
}

struct Ext4Node {
    var mode: UInt32 = 0
    var uid: UInt32 = 0
    var gid: UInt32 = 0
    var time: Int = 0
    var size: Int64 = 0
    var links: UInt32 = 0
    var rdev: UInt64 = 0
    var linkTarget: [UInt8]?
    var parent: UInt32 = 0
    var entries: [Ext4Entry] = []
    var subdirs: UInt32 = 0
    var dataBlocks: Int64 = 0
    var runs: [Ext4Run] = []
    var leaves: [UInt32] = []

    var fileType: UInt32 { mode & 0o170000 }
    var inUse: Bool { mode != 0 }
    var isFastSymlink: Bool { fileType == FileType.lnk && (linkTarget?.count ?? 0) < 60 }
}

/// The sized and laid-out file system, before any byte is written.
public struct Ext4Plan {
    var nodes: [Ext4Node] = []          // index = inode number - 1
    var pathIno: [[UInt8]: UInt32] = [:] // directories and regular files
    public private(set) var dataBytes: Int64 = 0
    var groups = 1
    var inodesPerGroup = 16
    var itableBlocks = 1
    var gdtBlocks = 1
    var totalBlocks: Int64 = 0
    var blockBitmap: [UInt32] = []
    var inodeBitmap: [UInt32] = []
    var inodeTable: [UInt32] = []
    var used: [UInt8] = []               // block bitmaps, 4096 bytes per group
    var cursor: Int64 = 0

    public var filesystemBytes: Int64 { totalBlocks * 4096 }
    public var inodeCount: Int { groups * inodesPerGroup }

    static let lostFound: UInt32 = 11
    /// The largest file the layout holds: four extent leaves of full extents.
    static let maxFileBytes = Int64(4 * Ext4Writer.extentsPerLeaf * Ext4Writer.maxExtentLength) * 4096

    private static func typeCode(_ fileType: UInt32) -> UInt8 {
        switch fileType {
        case FileType.reg: return 1
        case FileType.dir: return 2
        case FileType.chr: return 3
        case FileType.blk: return 4
        case FileType.ifo: return 5
        case FileType.sock: return 6
        case FileType.lnk: return 7
        default: return 0
        }
    }

    // MARK: pass 1

    mutating func read(source: TreeSource, epoch: Int?) throws {
        nodes = Array(repeating: Ext4Node(), count: 11)
        var next: UInt32 = 12
        var sawRoot = false
        try source.walk { item in
            let time = epoch.map { min(item.mtime, $0) } ?? item.mtime
            var node = Ext4Node(mode: item.mode, uid: item.uid, gid: item.gid, time: time, size: 0, links: 1, rdev: 0)
            if item.isRoot {
                guard item.fileType == FileType.dir else {
                    throw RootfsError("the root of \(source) is not a directory")
                }
                node.parent = 2
                nodes[1] = node
                pathIno[item.path] = 2
                sawRoot = true
                return
            }
            guard sawRoot, let parent = pathIno[parentPath(item.path)], nodes[Int(parent) - 1].fileType == FileType.dir else {
                throw RootfsError("\(source): \(item.pathString) comes before its parent directory",
                                  hint: "give a rootfs directory or a tar archive with every parent directory")
            }
            let slash = item.path.lastIndex(of: UInt8(ascii: "/")).map { $0 + 1 } ?? 0
            let name = Array(item.path[slash...])
            guard name.count <= 255 else {
                throw RootfsError("\(source): the name \(item.pathString) is longer than 255 bytes, the ext4 limit",
                                  hint: "shorten the name in the tree")
            }
            if let target = item.hardLinkTo {
                guard let ino = pathIno[target], nodes[Int(ino) - 1].fileType == FileType.reg else {
                    throw RootfsError("\(source): the hard link \(item.pathString) points to \(String(decoding: target, as: UTF8.self)), which is not a regular file before it")
                }
                nodes[Int(ino) - 1].links += 1
                guard nodes[Int(ino) - 1].links <= 65000 else {
                    throw RootfsError("\(source): \(String(decoding: target, as: UTF8.self)) has more than 65000 hard links, the ext4 limit")
                }
                nodes[Int(parent) - 1].entries.append(Ext4Entry(name: name, ino: ino, type: 1))
                return
            }
            let ino: UInt32
            if parent == 2 && name == Array("lost+found".utf8) && item.fileType != FileType.dir {
                throw RootfsError("\(source): /lost+found is not a directory; ext4 keeps that name for e2fsck's directory",
                                  hint: "remove or rename /lost+found in the tree")
            }
            if parent == 2 && name == Array("lost+found".utf8) {
                ino = Self.lostFound
            } else {
                ino = next
                next += 1
            }
            switch item.fileType {
            case FileType.reg:
                // Sizes come from the tree (a tar header can say anything): checked, never trapping.
                guard item.size >= 0, item.size <= Ext4Plan.maxFileBytes else {
                    throw RootfsError("\(source): \(item.pathString) has a size of \(item.size) bytes, more than the native ext4 writer holds (\(Ext4Plan.maxFileBytes >> 30) GiB)",
                                      hint: "use --ext4-writer mke2fs for files this large, or check the tree")
                }
                node.size = item.size
                node.dataBlocks = try Checked.add(item.size, 4095, "the size of \(item.pathString)") / 4096
                dataBytes = try Checked.add(dataBytes, item.size, "the total size of the files of \(source)")
                pathIno[item.path] = ino
            case FileType.dir:
                node.parent = parent
                pathIno[item.path] = ino
                nodes[Int(parent) - 1].subdirs += 1
            case FileType.lnk:
                let target = item.linkTarget ?? []
                guard !target.isEmpty, target.count < 4096 else {
                    throw RootfsError("\(source): the symlink \(item.pathString) has a target of \(target.count) bytes; ext4 holds 1 to 4095")
                }
                node.linkTarget = target
                node.size = Int64(target.count)
                node.dataBlocks = target.count < 60 ? 0 : 1
            case FileType.chr, FileType.blk:
                node.rdev = item.rdev
            case FileType.ifo, FileType.sock:
                break
            default:
                throw RootfsError("\(source): \(item.pathString) has an unknown file type (mode \(String(item.mode, radix: 8)))")
            }
            let index = Int(ino) - 1
            while nodes.count <= index { nodes.append(Ext4Node()) }
            nodes[index] = node
            nodes[Int(parent) - 1].entries.append(Ext4Entry(name: name, ino: ino, type: Self.typeCode(item.fileType)))
        }
        guard sawRoot else { throw RootfsError("\(source) holds no tree") }
        if !nodes[10].inUse {
            // lost+found as mke2fs makes it: 0700, four blocks, owned by root.
            let root = nodes[1]
            nodes[10] = Ext4Node(mode: FileType.dir | 0o700, uid: 0, gid: 0, time: root.time, links: 1, parent: 2)
            nodes[1].entries.append(Ext4Entry(name: Array("lost+found".utf8), ino: Self.lostFound, type: 2))
            nodes[1].subdirs += 1
        }
        for i in nodes.indices where nodes[i].fileType == FileType.dir {
            let links = 2 + nodes[i].subdirs
            nodes[i].links = links >= 65000 ? 1 : links
            let blocks = Int64(Self.directoryBlocks(nodes[i], ino: UInt32(i + 1)).count)
            nodes[i].dataBlocks = max(blocks, i == 10 ? 4 : 1)
            nodes[i].size = nodes[i].dataBlocks * 4096
        }
    }

    /// The directory's entries laid out in 4 KiB blocks: `.` and `..`, then the
    /// entries in walk order; the last record of a block reaches the block's end.
    static func directoryBlocks(_ node: Ext4Node, ino: UInt32) -> [[Ext4DirectoryEntry]] {
        var blocks: [[Ext4DirectoryEntry]] = [[]]
        var used = 0
        func closeBlock() {
            let last = blocks.count - 1
            blocks[last][blocks[last].count - 1].recordLength += UInt16(4096 - used)
        }
        func add(_ ino: UInt32, _ type: UInt8, _ name: [UInt8]) {
            let length = Ext4DirectoryEntry.minimumLength(nameCount: name.count)
            if used + length > 4096 {
                closeBlock()
                blocks.append([])
                used = 0
            }
            blocks[blocks.count - 1].append(Ext4DirectoryEntry(inode: ino, recordLength: UInt16(length), fileType: type, name: name))
            used += length
        }
        add(ino, 2, [46])
        add(node.parent, 2, [46, 46])
        for e in node.entries { add(e.ino, e.type, e.name) }
        closeBlock()
        return blocks
    }

    /// The directory's blocks as bytes, `blockCount` of them (blocks past the entries are empty records).
    static func directoryBytes(_ node: Ext4Node, ino: UInt32, blockCount: Int) -> [UInt8] {
        var bytes: [UInt8] = []
        bytes.reserveCapacity(blockCount * 4096)
        let blocks = directoryBlocks(node, ino: ino)
        for block in blocks {
            for entry in block { bytes += entry.encode() }
        }
        for _ in blocks.count..<max(blocks.count, blockCount) {
            bytes += Ext4DirectoryEntry(inode: 0, recordLength: 4096, fileType: 0, name: []).encode()
        }
        return bytes
    }

    // MARK: layout

    static func hasBackup(_ group: Int) -> Bool {
        if group <= 1 { return true }
        for base in [3, 5, 7] {
            var n = base
            while n < group { n *= base }
            if n == group { return true }
        }
        return false
    }

    mutating func layout(freeBlocks: Int64, journalBlocks: Int64 = 0) throws {
        if journalBlocks > 0 {
            nodes[7] = Ext4Node(mode: FileType.reg | 0o600, uid: 0, gid: 0, time: nodes[1].time,
                                size: journalBlocks * 4096, links: 1, dataBlocks: journalBlocks)
        }
        let usedInodes = nodes.count
        let data = try nodes.reduce(Int64(0)) { try Checked.add($0, $1.dataBlocks, "the blocks of the tree") }
        // Over 2^32 blocks no layout exists: refuse before sizing groups from such numbers.
        guard try Checked.add(data, freeBlocks, "the blocks of the tree and the free space") < Int64(UInt32.max) - (1 << 24) else {
            throw RootfsError("the tree needs a file system over 16 TiB, more than the native ext4 writer handles",
                              hint: "use --ext4-writer mke2fs, or less --free-space")
        }
        let wantInodes = max(4096, usedInodes + usedInodes / 5 + Int(freeBlocks / 4))
        // Leaf blocks for files of more than four extents: an upper bound.
        let leafAllowance = nodes.reduce(Int64(0)) { sum, n in
            n.dataBlocks > 4 * 16384 ? sum + (n.dataBlocks / 32768 * 2 + 2) / Int64(Ext4Writer.extentsPerLeaf) + 1 : sum
        }
        var groups = max(1, Int((data + freeBlocks) / 32768))
        while true {
            groups = max(groups, (wantInodes + 32767) / 32768)
            let ipg = min(32768, ((wantInodes + groups - 1) / groups + 15) / 16 * 16)
            let itable = ipg * 256 / 4096
            let gdt = (groups * 32 + 4095) / 4096
            let backups = (0..<groups).filter(Self.hasBackup).count
            let meta = Int64(backups * (1 + gdt) + groups * (2 + itable))
            let slack = Int64((Int(meta) / 32768 + 2) * itable) + 64
            var total = meta + slack + data + leafAllowance + freeBlocks
            total = (total + 255) / 256 * 256
            let needed = Int((total + 32767) / 32768)
            if needed > groups {
                groups = needed
                continue
            }
            // Exactly `groups` groups; the last one holds more than its own copies.
            let minimum = (Int64(groups - 1) * 32768 + Int64(gdt + 1 + 256) + 255) / 256 * 256
            inodesPerGroup = ipg
            itableBlocks = itable
            gdtBlocks = gdt
            totalBlocks = max(total, minimum)
            break
        }
        self.groups = Int((totalBlocks + 32767) / 32768)
        guard totalBlocks < Int64(UInt32.max) else {
            throw RootfsError("the tree needs a file system over 16 TiB, more than the native ext4 writer handles",
                              hint: "use --ext4-writer mke2fs")
        }
        try allocateAll()
    }

    /// Where the group copies of superblock and descriptors are: (first block, blocks).
    var reservedRegions: [(Int64, Int64)] = []

    private mutating func markUsed(_ start: Int64, _ count: Int64) {
        var b = start
        while b < start + count {
            if b % 8 == 0 && b + 8 <= start + count {
                used[Int(b / 8)] = 0xff
                b += 8
            } else {
                used[Int(b / 8)] |= UInt8(1 << (b % 8))
                b += 1
            }
        }
    }

    /// The first block at or after `b` that is not a group copy, and where the next copy starts.
    private func skipReserved(_ b: Int64) -> (Int64, Int64) {
        var at = b
        for (start, count) in reservedRegions {
            if at >= start && at < start + count { at = start + count }
        }
        var limit = Int64.max
        for (start, _) in reservedRegions where start > at {
            limit = start
            break
        }
        return (at, limit)
    }

    private mutating func allocate(_ count: Int64) -> [Ext4Run] {
        var runs: [Ext4Run] = []
        var remaining = count
        var logical: Int64 = 0
        while remaining > 0 {
            let (at, limit) = skipReserved(cursor)
            let length = min(remaining, limit - at, Int64(Ext4Writer.maxExtentLength))
            if let lastRun = runs.last, Int64(lastRun.physical) + Int64(lastRun.length) == at,
               Int64(lastRun.length) + length <= Int64(Ext4Writer.maxExtentLength) {
                runs[runs.count - 1].length += UInt32(length)
            } else {
                runs.append(Ext4Run(logical: UInt32(logical), physical: UInt32(at), length: UInt32(length)))
            }
            cursor = at + length
            logical += length
            remaining -= length
        }
        return runs
    }

    private mutating func allocateContiguous(_ count: Int64) -> Int64 {
        var (at, limit) = skipReserved(cursor)
        if at + count > limit { (at, limit) = skipReserved(limit) }
        cursor = at + count
        return at
    }

    private mutating func allocateAll() throws {
        used = [UInt8](repeating: 0, count: groups * 4096)
        reservedRegions = (0..<groups).filter(Self.hasBackup).map { (Int64($0) * 32768, Int64(1 + gdtBlocks)) }
        cursor = 0
        blockBitmap = (0..<groups).map { _ in UInt32(allocateContiguous(1)) }
        inodeBitmap = (0..<groups).map { _ in UInt32(allocateContiguous(1)) }
        inodeTable = (0..<groups).map { _ in UInt32(allocateContiguous(Int64(itableBlocks))) }
        for t in inodeTable { markUsed(Int64(t), Int64(itableBlocks)) }
        for (start, count) in reservedRegions { markUsed(start, count) }
        for b in blockBitmap + inodeBitmap { markUsed(Int64(b), 1) }
        // The journal, directories, long symlinks, then file data, each in inode (walk) order.
        if nodes[7].inUse { nodes[7].runs = allocate(nodes[7].dataBlocks) }
        for pass in [FileType.dir, FileType.lnk, FileType.reg] {
            for i in nodes.indices where (i == 1 || i >= 10) && nodes[i].fileType == pass && nodes[i].dataBlocks > 0 {
                nodes[i].runs = allocate(nodes[i].dataBlocks)
            }
        }
        for i in nodes.indices where nodes[i].runs.count > 4 {
            let leafCount = (nodes[i].runs.count + Ext4Writer.extentsPerLeaf - 1) / Ext4Writer.extentsPerLeaf
            guard leafCount <= 4 else {
                throw RootfsError("a file of \(nodes[i].size) bytes needs more extents than the native ext4 writer handles",
                                  hint: "use --ext4-writer mke2fs")
            }
            nodes[i].leaves = (0..<leafCount).map { _ in UInt32(allocateContiguous(1)) }
        }
        guard cursor <= totalBlocks else {
            throw RootfsError("internal error: the ext4 layout needs \(cursor) blocks but \(totalBlocks) were sized",
                              hint: "add room with --free-space MB, or use --ext4-writer mke2fs")
        }
        for n in nodes {
            for r in n.runs { markUsed(Int64(r.physical), Int64(r.length)) }
            for l in n.leaves { markUsed(Int64(l), 1) }
        }
        // Bits past the end of the last group are set, as e2fsck expects.
        let lastGroupBlocks = totalBlocks - Int64(groups - 1) * 32768
        if lastGroupBlocks < 32768 {
            markUsed(totalBlocks, Int64(groups) * 32768 - totalBlocks)
        }
    }

    // MARK: pass 2: file data

    func writeData(source: TreeSource, to out: BlockStream) throws {
        var seen = 0
        try source.walk { item in
            guard item.fileType == FileType.reg, item.hardLinkTo == nil, !item.isRoot else { return }
            guard let ino = pathIno[item.path], nodes[Int(ino) - 1].fileType == FileType.reg,
                  nodes[Int(ino) - 1].size == item.size else {
                throw RootfsError("\(source) changed while the ext4 image was written (\(item.pathString))",
                                  hint: "write the image from a tree nothing else modifies")
            }
            seen += 1
            let node = nodes[Int(ino) - 1]
            var remaining = item.size
            for run in node.runs {
                var position = Int64(run.physical) * 4096
                var runBytes = Int64(run.length) * 4096
                while runBytes > 0 {
                    // Ctrl-C / SIGTERM cancel the task: stop between 8 MiB chunks of a big file.
                    try Task.checkCancellation()
                    let want = Int(min(runBytes, Int64(BlockStream.capacity)))
                    let buffer = try out.space(at: position, count: want)
                    var filled = 0
                    while filled < want && remaining > 0 {
                        let chunk = Int(min(Int64(want - filled), remaining))
                        var n = try item.readContent?(UnsafeMutableRawBufferPointer(rebasing: buffer[filled..<filled + chunk])) ?? 0
                        if n == 0 {
                            memset(buffer.baseAddress! + filled, 0, chunk)
                            n = chunk
                        }
                        filled += n
                        remaining -= Int64(n)
                    }
                    if filled < want { memset(buffer.baseAddress! + filled, 0, want - filled) }
                    out.commit(want)
                    position += Int64(want)
                    runBytes -= Int64(want)
                }
            }
        }
        let expected = nodes[10...].filter { $0.fileType == FileType.reg }.count
        guard seen == expected else {
            throw RootfsError("\(source) changed while the ext4 image was written (\(seen) files, \(expected) before)",
                              hint: "write the image from a tree nothing else modifies")
        }
    }

    // MARK: metadata

    func writeMetadata(to out: BlockStream, label: String, uuid: [UInt8], time: Int) throws {
        // Directory blocks, long symlink targets, the journal superblock, extent leaves.
        for (i, node) in nodes.enumerated() where !node.runs.isEmpty || !node.leaves.isEmpty {
            if node.fileType == FileType.dir {
                let bytes = Self.directoryBytes(node, ino: UInt32(i + 1), blockCount: Int(node.dataBlocks))
                for run in node.runs {
                    let from = Int(run.logical) * 4096
                    try out.write(bytes[from..<from + Int(run.length) * 4096], at: Int64(run.physical) * 4096)
                }
            } else if node.fileType == FileType.lnk {
                var block = BinaryEncoder(zeros: 4096)
                block.put(node.linkTarget!, at: 0)
                try out.write(block.bytes[...], at: Int64(node.runs[0].physical) * 4096)
            }
            if i == 7 {
                // An empty jbd2 journal: its superblock in the first block, nothing to replay.
                let journal = Ext4JournalSuperblock(blockSize: 4096, maxLength: UInt32(node.dataBlocks), uuid: uuid)
                try out.write(journal.encode(size: 4096)[...], at: Int64(node.runs[0].physical) * 4096)
            }
            for (l, leaf) in node.leaves.enumerated() {
                let slice = node.runs[(l * Ext4Writer.extentsPerLeaf)..<min(node.runs.count, (l + 1) * Ext4Writer.extentsPerLeaf)]
                let block = Ext4ExtentNode.leaves(slice.map(Self.extent)).encode(size: 4096)
                try out.write(block[...], at: Int64(leaf) * 4096)
            }
        }
        // Inode tables (only the blocks holding used inodes; the rest stays zero).
        var freeInodes = [Int](repeating: inodesPerGroup, count: groups)
        var dirs = [Int](repeating: 0, count: groups)
        var ibitmap = [UInt8](repeating: 0, count: groups * 4096)
        for g in 0..<groups {
            let first = g * inodesPerGroup
            let count = max(0, min(inodesPerGroup, nodes.count - first))
            if count > 0 {
                var table = BinaryEncoder(zeros: (count * 256 + 4095) / 4096 * 4096)
                for k in 0..<count {
                    let index = first + k
                    let isReserved = index < 10
                    if isReserved || nodes[index].inUse {
                        ibitmap[g * 4096 + k / 8] |= UInt8(1 << (k % 8))
                        freeInodes[g] -= 1
                    }
                    if nodes[index].inUse {
                        table.put(Self.inode(nodes[index]).encode(size: 256), at: k * 256)
                        if nodes[index].fileType == FileType.dir { dirs[g] += 1 }
                    }
                }
                try out.write(table.bytes[...], at: Int64(inodeTable[g]) * 4096)
            }
            for k in inodesPerGroup..<32768 { ibitmap[g * 4096 + k / 8] |= UInt8(1 << (k % 8)) }
        }
        // Bitmaps.
        var freeBlocks = [Int](repeating: 0, count: groups)
        for g in 0..<groups {
            var zeros = 0
            for byte in used[(g * 4096)..<(g * 4096 + 4096)] { zeros += 8 - byte.nonzeroBitCount }
            freeBlocks[g] = zeros
            try out.write(used[(g * 4096)..<(g * 4096 + 4096)], at: Int64(blockBitmap[g]) * 4096)
            try out.write(ibitmap[(g * 4096)..<(g * 4096 + 4096)], at: Int64(inodeBitmap[g]) * 4096)
        }
        // Group descriptors.
        var gdt = BinaryEncoder(zeros: gdtBlocks * 4096)
        for g in 0..<groups {
            let descriptor = Ext4GroupDescriptor(blockBitmap: UInt64(blockBitmap[g]), inodeBitmap: UInt64(inodeBitmap[g]),
                                                 inodeTable: UInt64(inodeTable[g]), freeBlocksCount: UInt32(freeBlocks[g]),
                                                 freeInodesCount: UInt32(freeInodes[g]), usedDirsCount: UInt32(dirs[g]))
            gdt.put(descriptor.encode(size: 32), at: g * 32)
        }
        // Superblock and its copies.
        var sb = superblock(label: label, uuid: uuid, time: time)
        sb.freeBlocksCount = UInt64(freeBlocks.reduce(0, +))
        sb.freeInodesCount = UInt32(freeInodes.reduce(0, +))
        for g in 0..<groups where Self.hasBackup(g) {
            sb.blockGroupNumber = UInt16(truncatingIfNeeded: g)
            var block = BinaryEncoder(zeros: 4096)
            // Group 0 keeps its superblock at byte 1024 (the boot sector before it); copies start their group.
            block.put(sb.encode(), at: g == 0 ? 1024 : 0)
            try out.write(block.bytes[...], at: Int64(g) * 32768 * 4096)
            try out.write(gdt.bytes[...], at: (Int64(g) * 32768 + 1) * 4096)
        }
    }

    /// The superblock of this layout (free counts and group number set by the caller).
    func superblock(label: String, uuid: [UInt8], time: Int) -> Ext4Superblock {
        let stamp = UInt32(truncatingIfNeeded: time)
        var sb = Ext4Superblock()
        sb.inodesCount = UInt32(groups * inodesPerGroup)
        sb.blocksCount = UInt64(totalBlocks)
        sb.logBlockSize = 2                 // 4 KiB blocks
        sb.logClusterSize = 2
        sb.blocksPerGroup = 32768
        sb.clustersPerGroup = 32768
        sb.inodesPerGroup = UInt32(inodesPerGroup)
        sb.mountTime = stamp
        sb.writeTime = stamp
        sb.maxMountCount = 0xFFFF           // no forced check
        sb.state = 1                        // clean
        sb.errors = 1                       // continue
        sb.lastCheck = stamp
        sb.revisionLevel = 1                // dynamic
        sb.firstInode = 11
        sb.inodeSize = 256
        let journal = nodes[7].inUse
        sb.featureCompat = journal ? Ext4Feature.compatHasJournal : 0
        sb.featureIncompat = Ext4Feature.incompatFiletype | Ext4Feature.incompatExtents | Ext4Feature.incompatFlexBG
        sb.featureRoCompat = Ext4Feature.roCompatSparseSuper | Ext4Feature.roCompatLargeFile
            | Ext4Feature.roCompatDirNlink | Ext4Feature.roCompatExtraIsize
        sb.uuid = Array(uuid.prefix(16))
        sb.volumeName = Array(label.utf8.prefix(16))
        sb.hashSeed = Array(uuid.prefix(16))
        sb.defaultHashVersion = 1           // half_md4
        if journal {
            sb.journalInode = 8
            // s_jnl_blocks: a copy of the journal inode's i_block, then i_size_high and i_size.
            sb.journalBackupType = 1
            let block = BinaryDecoder(Self.inode(nodes[7]).block, what: "the journal inode's i_block")
            sb.journalBlocks = (0..<15).map { (try? block.u32(4 * $0)) ?? 0 }
                + [UInt32(truncatingIfNeeded: nodes[7].size >> 32), UInt32(truncatingIfNeeded: nodes[7].size)]
        }
        sb.defaultMountOptions = 0x0C       // user_xattr, acl
        sb.mkfsTime = stamp
        sb.minExtraIsize = 32
        sb.wantExtraIsize = 32
        sb.flags = 1                        // signed directory hash
        sb.logGroupsPerFlex = 4             // 16 groups per flex group
        return sb
    }

    static func extent(_ run: Ext4Run) -> Ext4ExtentLeaf {
        Ext4ExtentLeaf(block: run.logical, length: run.length, start: UInt64(run.physical))
    }

    /// The inode of a planned node: every time the node's (clamped) mtime, extents for data.
    static func inode(_ n: Ext4Node) -> Ext4Inode {
        let t = Ext4Time(seconds: Int64(n.time))
        var inode = Ext4Inode(mode: UInt16(truncatingIfNeeded: n.mode), uid: n.uid, size: UInt64(n.size),
                              atime: t, ctime: t, mtime: t, crtime: t, gid: n.gid,
                              linksCount: UInt16(truncatingIfNeeded: n.links),
                              blocks: UInt64((n.dataBlocks + Int64(n.leaves.count)) * 8), extraIsize: 32)
        switch n.fileType {
        case FileType.chr, FileType.blk:
            let major = UInt32(truncatingIfNeeded: ((n.rdev >> 8) & 0xfff) | ((n.rdev >> 32) & ~UInt64(0xfff)))
            let minor = UInt32(truncatingIfNeeded: (n.rdev & 0xff) | ((n.rdev >> 12) & ~UInt64(0xff)))
            inode.block = Ext4Inode.deviceBlock(major: major, minor: minor)
        case FileType.lnk where n.isFastSymlink:
            inode.block = Ext4Superblock.fixed(n.linkTarget!, 60)
        case FileType.reg, FileType.dir, FileType.lnk:
            inode.flags = Ext4Inode.flagExtents
            if n.leaves.isEmpty {
                inode.block = Ext4ExtentNode.leaves(n.runs.map(extent)).encode(size: 60)
            } else {
                let indexes = n.leaves.enumerated().map { k, leaf in
                    Ext4ExtentIndex(block: n.runs[k * Ext4Writer.extentsPerLeaf].logical, child: UInt64(leaf))
                }
                inode.block = Ext4ExtentNode.indexes(depth: 1, indexes).encode(size: 60)
            }
        default:
            break
        }
        return inode
    }
}

/// Coalesces writes at increasing offsets into big writes of up to 8 MiB; a
/// buffer that is all zeros is not written (the target region reads as zeros).
final class BlockStream {
    static let capacity = 8 << 20
    let output: OwnedFileDescriptor
    let base: Int64
    private let buffer: UnsafeMutableRawBufferPointer
    private var start: Int64 = 0
    private var length = 0

    init(output: consuming OwnedFileDescriptor, base: Int64) {
        self.output = output
        self.base = base
        buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: Self.capacity, alignment: 4096)
    }

    func release() { buffer.deallocate() }

    /// Room for `count` bytes (at most `capacity`) to land at file-system offset `at`; call `commit` after filling.
    func space(at position: Int64, count: Int) throws -> UnsafeMutableRawBufferPointer {
        if position != start + Int64(length) || length + count > Self.capacity {
            try flush()
            start = position
        }
        return UnsafeMutableRawBufferPointer(rebasing: buffer[length..<length + count])
    }

    func commit(_ count: Int) { length += count }

    func write(_ bytes: ArraySlice<UInt8>, at position: Int64) throws {
        var offset = 0
        while offset < bytes.count {
            let n = min(bytes.count - offset, Self.capacity)
            let room = try space(at: position + Int64(offset), count: n)
            bytes.withUnsafeBytes { src in
                room.copyMemory(from: UnsafeRawBufferPointer(rebasing: src[offset..<offset + n]))
            }
            commit(n)
            offset += n
        }
    }

    func flush() throws {
        defer { length = 0 }
        guard length > 0 else { return }
        let p = buffer.baseAddress!
        if length >= 16 {
            let head = p.load(as: UInt64.self) | p.load(fromByteOffset: 8, as: UInt64.self)
            if head == 0 && memcmp(p, p + 16, length - 16) == 0 { return }
        }
        try output.writeAll(UnsafeRawBufferPointer(start: p, count: length),
                            at: try Checked.add(base, start, "the write offset in \(output.name)"))
    }
}
