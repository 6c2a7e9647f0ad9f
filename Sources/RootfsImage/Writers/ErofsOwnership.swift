import RootfsSupport
import Foundation

/// Gives an erofs image that mkfs.erofs wrote with `--all-root` from a tree an ordinary user
/// extracted the owners, modes and device nodes of the tree source (a tar keeps them).
/// mkfs.erofs 1.5 has no `--tar`, and the extracted directory cannot hold other users' files
/// or device nodes (the extractor leaves empty placeholder files for those), so the inodes are
/// patched in place afterwards, as Ext4Fixup does for mke2fs: uid, gid and permission bits
/// from the source; a placeholder becomes the device (type, device number, plain layout, and
/// its directory entry's type). The super block checksum is recomputed when the image has one.
struct ErofsOwnership {
    static let superblockOffset = 1024
    static let blockSize = 4096
    static let magic: UInt32 = 0xE0F5_E1E2

    struct Inode {
        var offset: Int64
        var bytes: [UInt8]
        var extended: Bool { bytes[0] & 1 != 0 }
        var layout: UInt8 { (bytes[0] >> 1) & 7 }
        var mode: UInt32 { UInt32(le16(bytes, 4)) }
        var size: Int64 { extended ? Int64(bitPattern: le64(bytes, 8)) : Int64(le32(bytes, 8)) }
        var rawBlock: UInt32 { le32(bytes, 16) }
        var headerSize: Int { extended ? 64 : 32 }
        var xattrSize: Int { let n = Int(le16(bytes, 2)); return n == 0 ? 0 : 12 + (n - 1) * 4 }
    }

    struct Entry { var nid: UInt64; var typeOffset: Int64 }

    let fd: Int32
    let name: String
    var metaBlock: Int64 = 0
    var rootNid: UInt64 = 0

    /// Patches `image` (a bare erofs file) from `source`.
    static func apply(source: TreeSource, image: String) throws {
        let file = try OwnedFileDescriptor(path: image, flags: O_RDWR | O_CLOEXEC, name: image)
        var fixer = ErofsOwnership(fd: file.raw, name: image)
        try fixer.run(source: source)
    }

    func read(_ count: Int, at offset: Int64) throws -> [UInt8] {
        var buffer = [UInt8](repeating: 0, count: count)
        let n = buffer.withUnsafeMutableBytes { pread(fd, $0.baseAddress, count, off_t(offset)) }
        guard n == count else { throw RootfsError("\(name): cannot read \(count) bytes at \(offset) of the erofs image mkfs.erofs wrote") }
        return buffer
    }

    func write(_ bytes: [UInt8], at offset: Int64) throws { try FS.write(bytes, to: fd, at: offset, name: name) }

    func inode(_ nid: UInt64) throws -> Inode {
        let offset = try Checked.add(metaBlock * Int64(Self.blockSize), try Checked.multiply(Int64(clamping: nid), 32, "an erofs nid"), "an erofs inode offset")
        var bytes = try read(32, at: offset)
        if bytes[0] & 1 != 0 { bytes = try read(64, at: offset) }
        return Inode(offset: offset, bytes: bytes)
    }

    /// A directory's entries by name: nid and where the entry's file type byte is.
    func entries(of nid: UInt64) throws -> [[UInt8]: Entry] {
        let dir = try inode(nid)
        guard dir.mode & 0o170000 == 0o040000, dir.layout == 0 || dir.layout == 2, dir.size >= 0, dir.size < 1 << 32 else {
            throw RootfsError("\(name): erofs inode \(nid) is not a directory laid out as mkfs.erofs writes them")
        }
        var result: [[UInt8]: Entry] = [:]
        let blocks = (dir.size + Int64(Self.blockSize) - 1) / Int64(Self.blockSize)
        for i in 0..<blocks {
            let length = Int(min(Int64(Self.blockSize), dir.size - i * Int64(Self.blockSize)))
            let start: Int64 = dir.layout == 2 && i == blocks - 1
                ? dir.offset + Int64(dir.headerSize + dir.xattrSize)
                : (Int64(dir.rawBlock) + i) * Int64(Self.blockSize)
            let block = try read(length, at: start)
            guard length >= 12 else { throw RootfsError("\(name): a directory block of erofs inode \(nid) is too short") }
            let firstName = Int(le16(block, 8))
            guard firstName % 12 == 0, firstName >= 12, firstName <= length else { throw RootfsError("\(name): a damaged directory block in erofs inode \(nid)") }
            let count = firstName / 12
            for j in 0..<count {
                let nameStart = Int(le16(block, j * 12 + 8))
                var nameEnd = j + 1 < count ? Int(le16(block, (j + 1) * 12 + 8)) : length
                guard nameStart <= nameEnd, nameEnd <= length else { throw RootfsError("\(name): a damaged directory entry in erofs inode \(nid)") }
                if j == count - 1, let nul = block[nameStart..<nameEnd].firstIndex(of: 0) { nameEnd = nul }
                result[Array(block[nameStart..<nameEnd])] = Entry(nid: le64(block, j * 12), typeOffset: start + Int64(j * 12 + 10))
            }
        }
        return result
    }

    mutating func run(source: TreeSource) throws {
        let superblock = try read(128, at: Int64(Self.superblockOffset))
        guard le32(superblock, 0) == Self.magic, superblock[12] == 12 else {
            throw RootfsError("\(name): not an erofs image with 4096-byte blocks")
        }
        rootNid = UInt64(le16(superblock, 14))
        metaBlock = Int64(le32(superblock, 40))
        var directories: [[UInt8]: [[UInt8]: Entry]] = [:]
        var nids: [[UInt8]: UInt64] = [[46]: rootNid]
        try source.walk { item in
            try Task.checkCancellation()
            if item.hardLinkTo != nil { return }  // shares the first name's inode, fixed already
            var entry: Entry?
            let nid: UInt64
            if item.isRoot {
                nid = rootNid
            } else {
                let parent = parentPath(item.path)
                guard let parentNid = nids[parent] else { throw RootfsError("\(name): \(debugName(item.path)) has no parent directory in the erofs image") }
                if directories[parent] == nil { directories[parent] = try entries(of: parentNid) }
                let base = Array(item.path.split(separator: 47).last ?? [])
                guard let found = directories[parent]?[base] else { throw RootfsError("\(name): mkfs.erofs did not write \(debugName(item.path))") }
                entry = found
                nid = found.nid
            }
            if item.fileType == FileType.dir { nids[item.path] = nid }
            try fix(nid: nid, item: item, entry: entry)
        }
        if le32(superblock, 8) & 1 != 0 {  // EROFS_FEATURE_COMPAT_SB_CHKSUM: crc32c of the super block's block from 1024
            var block = try read(Self.blockSize - Self.superblockOffset, at: Int64(Self.superblockOffset))
            for i in 4..<8 { block[i] = 0 }
            let crc = CRC32C.checksum(block[...])
            try write((0..<4).map { UInt8(truncatingIfNeeded: crc >> (8 * UInt32($0))) }, at: Int64(Self.superblockOffset + 4))
        }
    }

    func fix(nid: UInt64, item: TreeItem, entry: Entry?) throws {
        var node = try inode(nid)
        var b = node.bytes
        let isDevice = item.fileType == FileType.chr || item.fileType == FileType.blk
        var type = node.mode & 0o170000
        if isDevice && type != item.fileType {
            // The extractor's empty placeholder: make it the device, as mkfs.erofs writes one.
            guard type == FileType.reg, node.size == 0, let entry else {
                throw RootfsError("\(name): the device \(debugName(item.path)) is not an empty placeholder in the erofs image")
            }
            type = item.fileType
            let major = UInt32((item.rdev >> 8) & 0xfff | ((item.rdev >> 32) & ~0xfff))
            let minor = UInt32((item.rdev & 0xff) | ((item.rdev >> 12) & ~0xff))
            let encoded = (minor & 0xff) | (major << 8) | ((minor & ~0xff) << 12)  // the kernel's new_encode_dev
            put32(&b, 16, encoded)
            b[0] &= ~0x0e  // EROFS_INODE_FLAT_PLAIN
            try write([item.fileType == FileType.chr ? 3 : 4], at: entry.typeOffset)  // EROFS_FT_CHRDEV / BLKDEV
        }
        guard type == item.fileType else {
            throw RootfsError("\(name): \(debugName(item.path)) has another type in the erofs image than in the tree")
        }
        // A link's mode is 0777 whatever the archive says (Linux cannot chmod a link): mkfs.erofs's stays, as in a root build.
        if type != FileType.lnk { put16(&b, 4, UInt16(type | item.permissions)) }
        if node.extended {
            put32(&b, 24, item.uid)
            put32(&b, 28, item.gid)
        } else {
            guard item.uid <= 0xffff, item.gid <= 0xffff else {
                throw RootfsError("\(debugName(item.path)) is owned by \(item.uid):\(item.gid), which the compact erofs inode mkfs.erofs chose cannot hold",
                                  hint: "write this image as root (mkfs.erofs then sees the owners itself), or write ext4 (--fs ext4)")
            }
            put16(&b, 24, UInt16(item.uid))
            put16(&b, 26, UInt16(item.gid))
        }
        if b != node.bytes {
            node.bytes = b
            try write(b, at: node.offset)
        }
    }
}

private func le16(_ b: [UInt8], _ o: Int) -> UInt16 { UInt16(b[o]) | UInt16(b[o + 1]) << 8 }
private func le32(_ b: [UInt8], _ o: Int) -> UInt32 { (0..<4).reduce(UInt32(0)) { $0 | UInt32(b[o + $1]) << (8 * UInt32($1)) } }
private func le64(_ b: [UInt8], _ o: Int) -> UInt64 { (0..<8).reduce(UInt64(0)) { $0 | UInt64(b[o + $1]) << (8 * UInt64($1)) } }
