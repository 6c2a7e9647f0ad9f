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
        let free = Int64(freeSpaceMiB) * 256
        let data = p.nodes.reduce(Int64(0)) { $0 + $1.dataBlocks }
        try p.layout(freeBlocks: free, journalBlocks: journal ? (data + free < 131072 ? 2048 : 8192) : 0)
        return p
    }

    /// Writes the planned file system into `fd` at `offset` (a second pass over the source for file data).
    public func write(plan: Ext4Plan, source: TreeSource, fd: Int32, offset: Int64, name: String) throws {
        let out = try BlockStream(fd: fd, base: offset, name: name)
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
                node.size = item.size
                node.dataBlocks = (item.size + 4095) / 4096
                dataBytes += item.size
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
            let blocks = Int64(Self.directoryBytes(nodes[i], ino: UInt32(i + 1), count: true).count / 4096)
            nodes[i].dataBlocks = max(blocks, i == 10 ? 4 : 1)
            nodes[i].size = nodes[i].dataBlocks * 4096
        }
    }

    /// The directory blocks (`count`: only the right number of 4 KiB blocks, content left zero).
    static func directoryBytes(_ node: Ext4Node, ino: UInt32, count: Bool = false) -> [UInt8] {
        var blocks = [UInt8](repeating: 0, count: 4096)
        var blockStart = 0
        var position = 0
        var last = 0
        func add(_ ino: UInt32, _ type: UInt8, _ name: [UInt8]) {
            let recLen = 8 + (name.count + 3) / 4 * 4
            if position + recLen > blockStart + 4096 {
                if !count { put16(&blocks, last + 4, UInt16(blockStart + 4096 - last)) }
                blockStart += 4096
                blocks.append(contentsOf: repeatElement(0, count: 4096))
                position = blockStart
            }
            last = position
            position += recLen
            if count { return }
            put32(&blocks, last, ino)
            put16(&blocks, last + 4, UInt16(recLen))
            blocks[last + 6] = UInt8(name.count)
            blocks[last + 7] = type
            blocks.replaceSubrange(last + 8..<last + 8 + name.count, with: name)
        }
        add(ino, 2, [46])
        add(node.parent, 2, [46, 46])
        for e in node.entries { add(e.ino, e.type, e.name) }
        if !count { put16(&blocks, last + 4, UInt16(blockStart + 4096 - last)) }
        return blocks
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
        let wantInodes = max(4096, usedInodes + usedInodes / 5 + Int(freeBlocks * 4096 / 16384))
        let data = nodes.reduce(Int64(0)) { $0 + $1.dataBlocks }
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
        // Directory blocks, long symlink targets, extent leaves.
        for (i, node) in nodes.enumerated() where !node.runs.isEmpty || !node.leaves.isEmpty {
            if node.fileType == FileType.dir {
                var bytes = Self.directoryBytes(node, ino: UInt32(i + 1))
                while bytes.count < Int(node.dataBlocks) * 4096 {
                    var empty = [UInt8](repeating: 0, count: 4096)
                    put16(&empty, 4, 4096)
                    bytes += empty
                }
                for run in node.runs {
                    let from = Int(run.logical) * 4096
                    try out.write(bytes[from..<from + Int(run.length) * 4096], at: Int64(run.physical) * 4096)
                }
            } else if node.fileType == FileType.lnk {
                var block = [UInt8](repeating: 0, count: 4096)
                block.replaceSubrange(0..<node.linkTarget!.count, with: node.linkTarget!)
                try out.write(block[...], at: Int64(node.runs[0].physical) * 4096)
            }
            if i == 7 {
                // An empty jbd2 journal: the superblock (big-endian) in its first block.
                var block = [UInt8](repeating: 0, count: 4096)
                func be32(_ o: Int, _ v: UInt32) { for k in 0..<4 { block[o + k] = UInt8(truncatingIfNeeded: v >> (24 - 8 * UInt32(k))) } }
                be32(0x00, 0xC03B3998)
                be32(0x04, 4)                       // superblock v2
                be32(0x0C, 4096)
                be32(0x10, UInt32(node.dataBlocks))
                be32(0x14, 1)                       // first log block
                be32(0x18, 1)                       // first expected sequence
                block.replaceSubrange(0x30..<0x40, with: uuid.prefix(16))
                be32(0x40, 1)                       // users
                try out.write(block[...], at: Int64(node.runs[0].physical) * 4096)
            }
            for (l, leaf) in node.leaves.enumerated() {
                let slice = node.runs[(l * Ext4Writer.extentsPerLeaf)..<min(node.runs.count, (l + 1) * Ext4Writer.extentsPerLeaf)]
                var block = [UInt8](repeating: 0, count: 4096)
                Self.putExtentHeader(&block, 0, entries: slice.count, max: Ext4Writer.extentsPerLeaf, depth: 0)
                for (k, run) in slice.enumerated() { Self.putExtent(&block, 12 + 12 * k, run) }
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
                var table = [UInt8](repeating: 0, count: (count * 256 + 4095) / 4096 * 4096)
                for k in 0..<count {
                    let index = first + k
                    let isReserved = index < 10
                    if isReserved || nodes[index].inUse {
                        ibitmap[g * 4096 + k / 8] |= UInt8(1 << (k % 8))
                        freeInodes[g] -= 1
                    }
                    if nodes[index].inUse {
                        Self.putInode(&table, k * 256, nodes[index])
                        if nodes[index].fileType == FileType.dir { dirs[g] += 1 }
                    }
                }
                try out.write(table[...], at: Int64(inodeTable[g]) * 4096)
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
        var gdt = [UInt8](repeating: 0, count: gdtBlocks * 4096)
        for g in 0..<groups {
            let o = g * 32
            put32(&gdt, o, blockBitmap[g])
            put32(&gdt, o + 4, inodeBitmap[g])
            put32(&gdt, o + 8, inodeTable[g])
            put16(&gdt, o + 12, UInt16(freeBlocks[g]))
            put16(&gdt, o + 14, UInt16(freeInodes[g]))
            put16(&gdt, o + 16, UInt16(dirs[g]))
        }
        // Superblock and its copies.
        for g in 0..<groups where Self.hasBackup(g) {
            var sb = [UInt8](repeating: 0, count: 1024)
            put32(&sb, 0x00, UInt32(groups * inodesPerGroup))
            put32(&sb, 0x04, UInt32(totalBlocks))
            put32(&sb, 0x0C, UInt32(freeBlocks.reduce(0, +)))
            put32(&sb, 0x10, UInt32(freeInodes.reduce(0, +)))
            put32(&sb, 0x14, 0)                 // first data block
            put32(&sb, 0x18, 2)                 // 4 KiB blocks
            put32(&sb, 0x1C, 2)
            put32(&sb, 0x20, 32768)
            put32(&sb, 0x24, 32768)
            put32(&sb, 0x28, UInt32(inodesPerGroup))
            put32(&sb, 0x2C, UInt32(truncatingIfNeeded: time))  // mtime
            put32(&sb, 0x30, UInt32(truncatingIfNeeded: time))  // wtime
            put16(&sb, 0x36, 0xFFFF)            // max mount count: none
            put16(&sb, 0x38, 0xEF53)
            put16(&sb, 0x3A, 1)                 // clean
            put16(&sb, 0x3C, 1)                 // errors: continue
            put32(&sb, 0x40, UInt32(truncatingIfNeeded: time))  // last check
            put32(&sb, 0x4C, 1)                 // dynamic revision
            put32(&sb, 0x54, 11)                // first inode
            put16(&sb, 0x58, 256)
            put16(&sb, 0x5A, UInt16(g))
            let journal = nodes[7].inUse
            put32(&sb, 0x5C, journal ? 0x4 : 0) // compat: has_journal
            put32(&sb, 0x60, 0x2 | 0x40 | 0x200)        // filetype, extents, flex_bg
            put32(&sb, 0x64, 0x1 | 0x2 | 0x20 | 0x40)   // sparse_super, large_file, dir_nlink, extra_isize
            sb.replaceSubrange(0x68..<0x78, with: uuid.prefix(16))
            let name = Array(label.utf8.prefix(16))
            sb.replaceSubrange(0x78..<0x78 + name.count, with: name)
            sb.replaceSubrange(0xEC..<0xFC, with: uuid.prefix(16))  // hash seed
            sb[0xFC] = 1                        // half_md4
            if journal {
                put32(&sb, 0xE0, 8)             // journal inode
                sb[0xFD] = 1                    // s_jnl_blocks holds a copy of the journal's i_block
                var inode = [UInt8](repeating: 0, count: 256)
                Self.putInode(&inode, 0, nodes[7])
                sb.replaceSubrange(0x10C..<0x10C + 60, with: inode[0x28..<0x64])
                put32(&sb, 0x10C + 60, UInt32(truncatingIfNeeded: nodes[7].size >> 32))
                put32(&sb, 0x10C + 64, UInt32(truncatingIfNeeded: nodes[7].size))
            }
            put32(&sb, 0x100, 0x0C)             // default mount options: user_xattr, acl
            put32(&sb, 0x108, UInt32(truncatingIfNeeded: time))  // mkfs time
            put16(&sb, 0x15C, 32)               // min extra isize
            put16(&sb, 0x15E, 32)               // want extra isize
            put32(&sb, 0x160, 1)                // signed directory hash
            sb[0x174] = 4                       // 16 groups per flex group
            if g == 0 {
                var block = [UInt8](repeating: 0, count: 4096)
                block.replaceSubrange(1024..<2048, with: sb)
                try out.write(block[...], at: 0)
            } else {
                var block = [UInt8](repeating: 0, count: 4096)
                block.replaceSubrange(0..<1024, with: sb)
                try out.write(block[...], at: Int64(g) * 32768 * 4096)
            }
            try out.write(gdt[...], at: (Int64(g) * 32768 + 1) * 4096)
        }
    }

    static func putExtentHeader(_ b: inout [UInt8], _ o: Int, entries: Int, max: Int, depth: Int) {
        put16(&b, o, 0xF30A)
        put16(&b, o + 2, UInt16(entries))
        put16(&b, o + 4, UInt16(max))
        put16(&b, o + 6, UInt16(depth))
    }

    static func putExtent(_ b: inout [UInt8], _ o: Int, _ run: Ext4Run) {
        put32(&b, o, run.logical)
        put16(&b, o + 4, UInt16(run.length))
        put16(&b, o + 6, 0)
        put32(&b, o + 8, run.physical)
    }

    static func putInode(_ b: inout [UInt8], _ o: Int, _ n: Ext4Node) {
        let t = n.time
        let lo = UInt32(truncatingIfNeeded: t)
        let extra = UInt32(truncatingIfNeeded: (Int64(t) - Int64(Int32(truncatingIfNeeded: t))) >> 32) & 3
        put16(&b, o + 0x00, UInt16(truncatingIfNeeded: n.mode))
        put16(&b, o + 0x02, UInt16(truncatingIfNeeded: n.uid))
        put32(&b, o + 0x04, UInt32(truncatingIfNeeded: n.size))
        put32(&b, o + 0x08, lo)   // atime
        put32(&b, o + 0x0C, lo)   // ctime
        put32(&b, o + 0x10, lo)   // mtime
        put16(&b, o + 0x18, UInt16(truncatingIfNeeded: n.gid))
        put16(&b, o + 0x1A, UInt16(truncatingIfNeeded: n.links))
        let blocks = (n.dataBlocks + Int64(n.leaves.count)) * 8
        put32(&b, o + 0x1C, UInt32(truncatingIfNeeded: blocks))
        put32(&b, o + 0x6C, UInt32(truncatingIfNeeded: n.size >> 32))
        put16(&b, o + 0x74, UInt16(truncatingIfNeeded: blocks >> 32))
        put16(&b, o + 0x78, UInt16(truncatingIfNeeded: n.uid >> 16))
        put16(&b, o + 0x7A, UInt16(truncatingIfNeeded: n.gid >> 16))
        put16(&b, o + 0x80, 32)   // extra isize
        put32(&b, o + 0x84, extra)
        put32(&b, o + 0x88, extra)
        put32(&b, o + 0x8C, extra)
        put32(&b, o + 0x90, lo)   // crtime
        put32(&b, o + 0x94, extra)
        let iblock = o + 0x28
        switch n.fileType {
        case FileType.chr, FileType.blk:
            let major = UInt32(truncatingIfNeeded: ((n.rdev >> 8) & 0xfff) | ((n.rdev >> 32) & ~UInt64(0xfff)))
            let minor = UInt32(truncatingIfNeeded: (n.rdev & 0xff) | ((n.rdev >> 12) & ~UInt64(0xff)))
            if major < 256 && minor < 256 {
                put32(&b, iblock, (major << 8) | minor)
            } else {
                put32(&b, iblock + 4, (minor & 0xff) | (major << 8) | ((minor & ~0xff) << 12))
            }
        case FileType.lnk where n.isFastSymlink:
            b.replaceSubrange(iblock..<iblock + n.linkTarget!.count, with: n.linkTarget!)
        case FileType.reg, FileType.dir, FileType.lnk:
            put32(&b, o + 0x20, 0x80000)   // extents
            if n.leaves.isEmpty {
                putExtentHeader(&b, iblock, entries: n.runs.count, max: 4, depth: 0)
                for (k, run) in n.runs.enumerated() { putExtent(&b, iblock + 12 + 12 * k, run) }
            } else {
                putExtentHeader(&b, iblock, entries: n.leaves.count, max: 4, depth: 1)
                for (k, leaf) in n.leaves.enumerated() {
                    let e = iblock + 12 + 12 * k
                    put32(&b, e, n.runs[k * Ext4Writer.extentsPerLeaf].logical)
                    put32(&b, e + 4, leaf)
                }
            }
        default:
            break
        }
    }
}

/// Coalesces writes at increasing offsets into big pwrite calls; a buffer
/// that is all zeros is not written (the target region reads as zeros).
final class BlockStream {
    static let capacity = 8 << 20
    let fd: Int32
    let base: Int64
    let name: String
    private let buffer: UnsafeMutableRawBufferPointer
    private var start: Int64 = 0
    private var length = 0

    init(fd: Int32, base: Int64, name: String) throws {
        self.fd = fd
        self.base = base
        self.name = name
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
        var done = 0
        while done < length {
            let n = pwrite(fd, p + done, length - done, off_t(base + start + Int64(done)))
            if n < 0 {
                if errno == EINTR { continue }
                throw RootfsError("cannot write \(name): \(FS.errnoText())", hint: "check free disk space")
            }
            done += n
        }
    }
}
