import Foundation
import RootfsSupport

/// Reads an ext4 file system in process — bare, or at a byte offset inside a
/// disk image — and yields its tree as TreeItems in the canonical order of
/// `TreeSource.walk`: no tool, no mount, no root.
///
/// It reads what rootfs's writer and `mke2fs -d` write: extents (index nodes
/// to depth 5, unwritten extents and holes read as zeros), linear and htree
/// directories (an htree's leaves are linear blocks; its index blocks are
/// records of inode 0 and are skipped), fast and slow symlinks, devices, hard
/// links, 32- and 64-bit group descriptors. Refused with a clear error: block
/// maps (ext2/ext3 files), inline data, encryption, meta_bg, a journal that
/// needs replaying.
///
/// The image is untrusted: every number read is checked against the file
/// system's bounds before it is used (block numbers below the block count,
/// inode numbers in range, extent depth at most 5 and decreasing, directory
/// records inside their block), a directory is entered once (no loops), the
/// directory blocks read in total cannot exceed the file system's blocks, and
/// the walk keeps no recursion (an explicit stack). A hostile image gives a
/// RootfsError, never a trap, never an allocation beyond the file system's size.
struct Ext4Reader {
    var path: String
    var offset: Int64

    func walk(_ visit: (TreeItem) throws -> Void) throws {
        let volume = try Ext4Volume(path: path, offset: offset)
        try volume.walk(visit)
    }
}

/// An open ext4 file system: the validated superblock and group descriptors.
final class Ext4Volume {
    let file: OwnedFileDescriptor
    let name: String
    let offset: Int64
    let superblock: Ext4Superblock
    let blockSize: Int
    let blocksCount: UInt64
    let inodeSize: Int
    let inodesPerGroup: UInt32
    let descriptors: [Ext4GroupDescriptor]
    /// metadata_csum: the seed of every inode's CRC-32C (nil: no checksums to verify).
    let checksumSeed: UInt32?
    /// Directory bytes the walk may still read: the file system's size (each block belongs to one directory).
    private var directoryBudget: UInt64

    static let rootInode: UInt32 = 2

    init(path: String, offset: Int64) throws {
        let name = offset == 0 ? path : "\(path) (ext4 at byte \(offset))"
        self.name = name
        self.offset = offset
        file = try OwnedFileDescriptor(path: path, flags: O_RDONLY)
        let imageBytes = try file.size()
        let raw = try file.read(count: Ext4Superblock.size, at: try Checked.add(offset, 1024, "the superblock offset of \(path)"))
        guard raw.count == Ext4Superblock.size else {
            throw RootfsError("\(name) is not an ext4 file system: it ends before the superblock")
        }
        let sb = try Ext4Superblock.decode(from: BinaryDecoder(raw, what: "the superblock of \(name)"))
        guard sb.magic == Ext4Superblock.magic else {
            throw RootfsError("\(name) is not an ext4 file system (no superblock magic at byte 1080)")
        }
        func bad(_ what: String) -> RootfsError {
            RootfsError("\(name): the superblock is corrupt: \(what)", hint: "check the image with e2fsck -fn")
        }
        // With metadata_csum (mke2fs's default), a corrupted superblock or inode is caught by its CRC-32C.
        if sb.featureRoCompat & Ext4Feature.roCompatMetadataCsum != 0 {
            guard CRC32C.checksum(raw[0..<0x3FC]) == sb.checksum else { throw bad("its checksum does not match") }
            checksumSeed = sb.featureIncompat & Ext4Feature.incompatCsumSeed != 0 ? sb.checksumSeed : CRC32C.checksum(sb.uuid[...])
        } else {
            checksumSeed = nil
        }
        guard sb.logBlockSize <= 6 else { throw bad("block size 1024 << \(sb.logBlockSize)") }
        let bs = sb.blockSize
        let unsupportedIncompat = sb.featureIncompat & ~(Ext4Feature.incompatFiletype | Ext4Feature.incompatExtents
            | Ext4Feature.incompat64bit | Ext4Feature.incompatMMP | Ext4Feature.incompatFlexBG | Ext4Feature.incompatEAInode
            | Ext4Feature.incompatCsumSeed | Ext4Feature.incompatLargeDir | Ext4Feature.incompatInlineData
            | Ext4Feature.incompatCasefold)
        if sb.featureIncompat & Ext4Feature.incompatRecover != 0 {
            throw RootfsError("\(name): the file system's journal needs replaying (it was not unmounted cleanly)",
                              hint: "replay it first on a copy: e2fsck -fy IMAGE")
        }
        guard unsupportedIncompat == 0 else {
            throw RootfsError("\(name) uses ext4 features the reader does not read (incompat 0x\(String(unsupportedIncompat, radix: 16)): compression, journal device, meta_bg, dirdata or encryption)",
                              hint: "extract it with a mounted file system or debugfs rdump instead")
        }
        // Without filetype, a record's length of name is 16 bits: not what either writer makes.
        guard sb.featureIncompat & Ext4Feature.incompatFiletype != 0 else {
            throw RootfsError("\(name) has no filetype feature (an old ext2 layout), which the reader does not read")
        }
        guard sb.featureRoCompat & 0x200 == 0 else {
            throw RootfsError("\(name) uses bigalloc (clusters), which the reader does not read")
        }
        if sb.revisionLevel == 0 {
            inodeSize = 128
        } else {
            inodeSize = Int(sb.inodeSize)
            guard inodeSize >= 128, inodeSize <= bs, inodeSize & (inodeSize - 1) == 0 else { throw bad("inode size \(inodeSize)") }
        }
        let firstInode = sb.revisionLevel == 0 ? 11 : sb.firstInode
        guard sb.blocksPerGroup >= 8, sb.blocksPerGroup <= 8 * UInt32(bs) else { throw bad("\(sb.blocksPerGroup) blocks per group") }
        guard sb.inodesPerGroup >= 1, sb.inodesPerGroup <= 8 * UInt32(bs) else { throw bad("\(sb.inodesPerGroup) inodes per group") }
        guard sb.firstDataBlock == (bs == 1024 ? 1 : 0), sb.blocksCount > UInt64(sb.firstDataBlock) else {
            throw bad("first data block \(sb.firstDataBlock) of \(sb.blocksCount)")
        }
        // The image holds every block: all later bounds follow from this one.
        let fsBytes = try Checked.multiply(sb.blocksCount, UInt64(bs), "the size of \(name)")
        guard imageBytes >= offset, fsBytes <= UInt64(imageBytes - offset) else {
            throw RootfsError("\(name) is truncated: the file system has \(sb.blocksCount) blocks of \(bs) bytes (\(fsBytes) bytes), the image only \(max(0, imageBytes - offset)) after byte \(offset)",
                              hint: "the image was cut short; write it again or restore the full file")
        }
        let groupCount = (sb.blocksCount - UInt64(sb.firstDataBlock) + UInt64(sb.blocksPerGroup) - 1) / UInt64(sb.blocksPerGroup)
        guard sb.inodesCount >= 11, UInt64(sb.inodesCount) <= groupCount * UInt64(sb.inodesPerGroup),
              firstInode >= 3, firstInode <= sb.inodesCount else {
            throw bad("\(sb.inodesCount) inodes in \(groupCount) groups of \(sb.inodesPerGroup), first inode \(firstInode)")
        }
        let descriptorSize: Int
        if sb.is64bit {
            descriptorSize = Int(sb.descriptorSize)
            guard descriptorSize >= 64, descriptorSize <= 1024, descriptorSize & (descriptorSize - 1) == 0 else {
                throw bad("group descriptor size \(descriptorSize)")
            }
        } else {
            descriptorSize = 32
        }
        let gdtBytes = Int(groupCount) * descriptorSize
        let gdtOffset = (UInt64(sb.firstDataBlock) + 1) * UInt64(bs)
        guard gdtOffset + UInt64(gdtBytes) <= fsBytes else { throw bad("\(groupCount) group descriptors past the end") }
        let gdt = try file.read(count: gdtBytes, at: offset + Int64(gdtOffset))
        let decoder = BinaryDecoder(gdt, what: "the group descriptors of \(name)")
        let tableBlocks = (UInt64(sb.inodesPerGroup) * UInt64(inodeSize) + UInt64(bs) - 1) / UInt64(bs)
        var descriptors: [Ext4GroupDescriptor] = []
        descriptors.reserveCapacity(Int(groupCount))
        for g in 0..<Int(groupCount) {
            let d = try Ext4GroupDescriptor.decode(from: decoder, at: g * descriptorSize, size: descriptorSize)
            guard d.inodeTable > 0, d.inodeTable <= sb.blocksCount, tableBlocks <= sb.blocksCount - d.inodeTable else {
                throw RootfsError("\(name): group \(g)'s inode table (block \(d.inodeTable)) is outside the file system",
                                  hint: "check the image with e2fsck -fn")
            }
            descriptors.append(d)
        }
        self.superblock = sb
        self.blockSize = bs
        self.blocksCount = sb.blocksCount
        self.inodesPerGroup = sb.inodesPerGroup
        self.descriptors = descriptors
        self.directoryBudget = fsBytes
    }

    /// `count` bytes at byte `within` of physical block `block` (which is checked).
    func read(block: UInt64, within: Int = 0, count: Int, what: @autoclosure () -> String) throws -> [UInt8] {
        guard block < blocksCount, within >= 0, count >= 0,
              UInt64(within) + UInt64(count) <= (blocksCount - block) * UInt64(blockSize) else {
            throw RootfsError("\(name): \(what()) points to block \(block), past the end of the file system (\(blocksCount) blocks)",
                              hint: "the image is corrupt; check it with e2fsck -fn")
        }
        let at = offset + Int64(block) * Int64(blockSize) + Int64(within)
        let bytes = try file.read(count: count, at: at)
        guard bytes.count == count else { throw RootfsError("\(name) is truncated at byte \(at)") }
        return bytes
    }

    func inode(_ number: UInt32, what: @autoclosure () -> String) throws -> Ext4Inode {
        guard number >= 1, number <= superblock.inodesCount else {
            throw RootfsError("\(name): \(what()) names inode \(number), outside 1...\(superblock.inodesCount)",
                              hint: "the image is corrupt; check it with e2fsck -fn")
        }
        let index = UInt64(number - 1)
        let group = Int(index / UInt64(inodesPerGroup))
        let byte = (index % UInt64(inodesPerGroup)) * UInt64(inodeSize)
        let table = descriptors[group].inodeTable
        let bytes = try read(block: table + byte / UInt64(blockSize), within: Int(byte % UInt64(blockSize)), count: inodeSize,
                             what: "inode \(number)")
        let node = try Ext4Inode.decode(from: BinaryDecoder(bytes, what: "inode \(number) of \(name)"), size: inodeSize)
        if let seed = checksumSeed { try verifyChecksum(node, bytes, number: number, seed: seed) }
        return node
    }

    /// ext4_inode_csum: CRC-32C of the inode number, generation and the inode with its checksum fields zeroed.
    private func verifyChecksum(_ node: Ext4Inode, _ bytes: [UInt8], number: UInt32, seed: UInt32) throws {
        var raw = bytes
        raw[0x7C] = 0; raw[0x7D] = 0
        let hasHigh = inodeSize > 128 && node.extraIsize >= 4
        if hasHigh { raw[0x82] = 0; raw[0x83] = 0 }
        var words = BinaryEncoder()
        words.append(number)
        words.append(node.generation)
        let crc = CRC32C.checksum(raw[...], seed: CRC32C.checksum(words.bytes[...], seed: seed))
        guard hasHigh ? crc == node.checksum : crc & 0xFFFF == node.checksum & 0xFFFF else {
            throw RootfsError("\(name): inode \(number) is corrupt (its checksum does not match)",
                              hint: "check the image with e2fsck -fn")
        }
    }

    /// Claims `bytes` of the directory budget (see `directoryBudget`).
    private func spendDirectoryBytes(_ bytes: UInt64, _ path: [UInt8]) throws {
        guard bytes <= directoryBudget else {
            throw RootfsError("\(name): the directories (at \(debugName(path))) hold more blocks than the file system has",
                              hint: "the image is corrupt (blocks shared between directories); check it with e2fsck -fn")
        }
        directoryBudget -= bytes
    }

    // MARK: the walk

    struct Entry {
        var name: [UInt8]
        var inode: UInt32
    }

    /// The entries of a directory (without `.` and `..`), sorted by name bytes; duplicates refused.
    func entries(of inode: Ext4Inode, number: UInt32, path: [UInt8]) throws -> [Entry] {
        let what = "the directory \(debugName(path)) (inode \(number))"
        guard inode.flags & Ext4Inode.flagInlineData == 0 else {
            throw RootfsError("\(name): \(what) keeps its entries inline (inline_data), which the reader does not read")
        }
        guard inode.size % UInt64(blockSize) == 0 else {
            throw RootfsError("\(name): \(what) has a size of \(inode.size) bytes, not a multiple of the block size",
                              hint: "the image is corrupt; check it with e2fsck -fn")
        }
        try spendDirectoryBytes(inode.size, path)
        var map = try Ext4BlockMap(volume: self, inode: inode, what: what)
        var out: [Entry] = []
        for logical in 0..<(inode.size / UInt64(blockSize)) {
            let run = try map.run(at: logical)
            guard let physical = run.physical else {
                throw RootfsError("\(name): \(what) has a hole at block \(logical)", hint: "the image is corrupt; check it with e2fsck -fn")
            }
            let block = try read(block: physical, count: blockSize, what: "\(what), block \(logical)")
            let d = BinaryDecoder(block, what: "\(what), block \(logical)")
            var position = 0
            while position < blockSize {
                let entry = try Ext4DirectoryEntry.decode(from: d, at: position, blockSize: blockSize)
                position += Int(entry.recordLength == 0 ? 65536 : Int(entry.recordLength))
                // Inode 0: an unused record, an htree index block, the checksum tail.
                guard entry.inode != 0 else { continue }
                let name = entry.name
                if name == [46] || name == [46, 46] { continue }
                guard !name.isEmpty, !name.contains(0), !name.contains(UInt8(ascii: "/")) else {
                    throw RootfsError("\(self.name): \(what) holds an entry named \(debugName(name)), which no path can hold",
                                      hint: "the image is corrupt; check it with e2fsck -fn")
                }
                out.append(Entry(name: name, inode: entry.inode))
            }
        }
        out.sort { $0.name.lexicographicallyPrecedes($1.name) }
        for k in out.indices.dropFirst() where out[k].name == out[k - 1].name {
            throw RootfsError("\(name): \(what) holds the name \(debugName(out[k].name)) twice", hint: "the image is corrupt; check it with e2fsck -fn")
        }
        return out
    }

    func walk(_ visit: (TreeItem) throws -> Void) throws {
        let root = try inode(Self.rootInode, what: "the root")
        guard root.fileType == FileType.dir else {
            throw RootfsError("\(name): the root inode is not a directory", hint: "the image is corrupt; check it with e2fsck -fn")
        }
        try visit(item(root, path: [46]))
        var entered: Set<UInt32> = [Self.rootInode]
        var firstName: [UInt32: [UInt8]] = [:]
        // Depth-first with the names of each level sorted: the canonical order. An
        // explicit stack, so a hostile depth cannot overflow the thread's stack.
        var stack: [(path: [UInt8], entries: [Entry], next: Int)] = [([], try entries(of: root, number: Self.rootInode, path: [46]), 0)]
        while !stack.isEmpty {
            let top = stack.count - 1
            guard stack[top].next < stack[top].entries.count else {
                stack.removeLast()
                continue
            }
            let entry = stack[top].entries[stack[top].next]
            stack[top].next += 1
            let path = stack[top].path.isEmpty ? entry.name : stack[top].path + [47] + entry.name
            let what = "the entry \(debugName(path))"
            guard entry.inode == Self.rootInode || entry.inode >= superblock.firstInode || superblock.revisionLevel == 0 && entry.inode >= 11 else {
                throw RootfsError("\(name): \(what) names the reserved inode \(entry.inode)", hint: "the image is corrupt; check it with e2fsck -fn")
            }
            let node = try inode(entry.inode, what: what)
            guard node.mode != 0, node.linksCount > 0 || node.fileType == FileType.dir else {
                throw RootfsError("\(name): \(what) names inode \(entry.inode), which is not in use", hint: "the image is corrupt; check it with e2fsck -fn")
            }
            if node.fileType == FileType.dir {
                guard entered.insert(entry.inode).inserted else {
                    throw RootfsError("\(name): \(what) names directory inode \(entry.inode) a second time (a directory loop or a hard-linked directory)",
                                      hint: "the image is corrupt; check it with e2fsck -fn")
                }
                try visit(item(node, path: path))
                stack.append((path, try entries(of: node, number: entry.inode, path: path), 0))
                continue
            }
            if node.fileType == FileType.reg && node.linksCount > 1 {
                if let first = firstName[entry.inode] {
                    var link = try item(node, path: path, content: false)
                    link.hardLinkTo = first
                    link.size = 0
                    try visit(link)
                    continue
                }
                firstName[entry.inode] = path
            }
            try visit(item(node, path: path))
        }
    }

    /// The TreeItem of an inode; regular files read their content lazily through the extent tree.
    func item(_ node: Ext4Inode, path: [UInt8], content: Bool = true) throws -> TreeItem {
        let what = "\(debugName(path == [46] ? [47] : path))"
        var item = TreeItem(path: path, mode: UInt32(node.mode), uid: node.uid, gid: node.gid,
                            mtime: Int(node.mtime.seconds), size: 0, linkTarget: nil, hardLinkTo: nil,
                            nlink: node.fileType == FileType.dir ? 2 : UInt32(node.linksCount), rdev: 0)
        switch node.fileType {
        case FileType.dir, FileType.ifo, FileType.sock:
            break
        case FileType.reg:
            guard content else { break }
            guard node.flags & Ext4Inode.flagInlineData == 0 else {
                throw RootfsError("\(name): the file \(what) keeps its data inline (inline_data), which the reader does not read")
            }
            // ext4's limit: 2^32 blocks. A larger size is corruption, not a file to read zeros from for ever.
            guard node.size <= UInt64(UInt32.max) * UInt64(blockSize) else {
                throw RootfsError("\(name): the file \(what) has a size of \(node.size) bytes, more than ext4 holds",
                                  hint: "the image is corrupt; check it with e2fsck -fn")
            }
            item.size = Int64(node.size)
            let reader = try Ext4FileContent(map: Ext4BlockMap(volume: self, inode: node, what: "the file \(what)"), size: node.size)
            item.readContent = { buffer in try reader.read(into: buffer) }
        case FileType.lnk:
            guard node.size >= 1, node.size < UInt64(min(blockSize, 4096)) else {
                throw RootfsError("\(name): the symlink \(what) has a target of \(node.size) bytes", hint: "the image is corrupt; check it with e2fsck -fn")
            }
            if node.size < 60 && node.flags & (Ext4Inode.flagExtents | Ext4Inode.flagInlineData) == 0 {
                item.linkTarget = Array(node.block.prefix(Int(node.size)))
            } else {
                guard node.flags & Ext4Inode.flagInlineData == 0 else {
                    throw RootfsError("\(name): the symlink \(what) keeps its target inline (inline_data), which the reader does not read")
                }
                var map = try Ext4BlockMap(volume: self, inode: node, what: "the symlink \(what)")
                guard let physical = try map.run(at: 0).physical else {
                    throw RootfsError("\(name): the symlink \(what) has no block for its target", hint: "the image is corrupt; check it with e2fsck -fn")
                }
                item.linkTarget = try read(block: physical, count: Int(node.size), what: "the symlink \(what)")
            }
            guard !item.linkTarget!.contains(0) else {
                throw RootfsError("\(name): the target of the symlink \(what) holds a NUL byte", hint: "the image is corrupt; check it with e2fsck -fn")
            }
        case FileType.chr, FileType.blk:
            let (major, minor) = node.device
            let (ma, mi) = (UInt64(major), UInt64(minor))
            // glibc's makedev, the encoding st_rdev and the writers use.
            item.rdev = (mi & 0xff) | ((ma & 0xfff) << 8) | ((mi & ~0xff) << 12) | ((ma & ~0xfff) << 32)
        default:
            throw RootfsError("\(name): \(what) has an unknown file type (mode \(String(node.mode, radix: 8)))",
                              hint: "the image is corrupt; check it with e2fsck -fn")
        }
        return item
    }
}

/// Maps logical blocks of one inode to physical blocks through its extent tree,
/// one node per level read at a time (memory: depth × block size).
struct Ext4BlockMap {
    let volume: Ext4Volume
    let what: String
    let root: Ext4ExtentNode
    /// The last node read at each depth (a sequential read stays on the same nodes).
    private var cache: [UInt64: Ext4ExtentNode] = [:]

    init(volume: Ext4Volume, inode: Ext4Inode, what: String) throws {
        self.volume = volume
        self.what = what
        if inode.flags & Ext4Inode.flagExtents == 0 {
            // An inode without data (empty file, device) may have no extent header at all.
            guard inode.size == 0 || inode.block.allSatisfy({ $0 == 0 }) && inode.blocks == 0 else {
                throw RootfsError("\(volume.name): \(what) uses a block map (an ext2/ext3 file), which the reader does not read",
                                  hint: "convert the file system to extents, or extract it with debugfs rdump")
            }
            root = .leaves([])
            return
        }
        root = try Ext4ExtentNode.decode(from: BinaryDecoder(inode.block, what: "the extent tree root of \(what)"), size: 60, depth: nil).1
    }

    /// The run at `logical`: physical block (nil for a hole or an unwritten extent) and how many blocks it goes on.
    /// Always at least one block, so a reader advancing by runs always ends.
    mutating func run(at logical: UInt64) throws -> (physical: UInt64?, count: UInt64) {
        guard logical < 1 << 32 else { return (nil, UInt64.max - logical) }
        var node = root
        var limit: UInt64 = 1 << 32
        while true {
            switch node {
            case .indexes(let depth, let entries):
                guard let k = entries.lastIndex(where: { UInt64($0.block) <= logical }) else {
                    return (nil, min(limit, entries.first.map { UInt64($0.block) } ?? limit) - logical)
                }
                if k + 1 < entries.count { limit = min(limit, UInt64(entries[k + 1].block)) }
                node = try child(entries[k].child, depth: depth - 1)
            case .leaves(let extents):
                for x in extents {
                    if logical < UInt64(x.block) { return (nil, min(limit, UInt64(x.block)) - logical) }
                    let end = UInt64(x.block) + UInt64(x.length)
                    guard logical < end else { continue }
                    let count = min(end, limit) - logical
                    if x.unwritten { return (nil, count) }
                    guard x.start < volume.blocksCount, UInt64(x.length) <= volume.blocksCount - x.start else {
                        throw RootfsError("\(volume.name): \(what) has an extent (blocks \(x.start)+\(x.length)) past the end of the file system (\(volume.blocksCount) blocks)",
                                          hint: "the image is corrupt; check it with e2fsck -fn")
                    }
                    return (x.start + (logical - UInt64(x.block)), count)
                }
                return (nil, limit - logical)
            }
        }
    }

    private mutating func child(_ block: UInt64, depth: UInt16) throws -> Ext4ExtentNode {
        if let node = cache[block] { return node }
        let bytes = try volume.read(block: block, count: volume.blockSize, what: "an extent node of \(what)")
        let node = try Ext4ExtentNode.decode(from: BinaryDecoder(bytes, what: "an extent node of \(what) (block \(block))"),
                                             size: volume.blockSize, depth: depth).1
        // At most one node per level is kept.
        if cache.count >= 6 { cache.removeAll(keepingCapacity: true) }
        cache[block] = node
        return node
    }
}

/// A regular file's content read sequentially: holes and unwritten extents as zeros.
final class Ext4FileContent {
    private var map: Ext4BlockMap
    private let size: UInt64
    private var position: UInt64 = 0

    init(map: Ext4BlockMap, size: UInt64) {
        self.map = map
        self.size = size
    }

    func read(into buffer: UnsafeMutableRawBufferPointer) throws -> Int {
        guard position < size, buffer.count > 0 else { return 0 }
        let blockSize = UInt64(map.volume.blockSize)
        let want = min(UInt64(buffer.count), size - position)
        let within = position % blockSize
        let run = try map.run(at: position / blockSize)
        let runBytes = run.count >= UInt64.max / blockSize ? UInt64.max : run.count * blockSize - within
        let n = Int(min(want, runBytes))
        if let physical = run.physical {
            let bytes = try map.volume.read(block: physical, within: Int(within), count: n, what: map.what)
            bytes.withUnsafeBytes { buffer.baseAddress!.copyMemory(from: $0.baseAddress!, byteCount: n) }
        } else {
            memset(buffer.baseAddress!, 0, n)
        }
        position += UInt64(n)
        return n
    }
}
