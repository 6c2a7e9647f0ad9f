import Foundation

/// What `rootfs boot` was given, told apart by content rather than by name.
public enum BootImageKind: Sendable, Equatable {
    /// An initramfs: a cpio archive, plain or compressed.
    case initrd
    /// A raw disk with an MBR partition table; the root is its first partition.
    case partitionedDisk
    /// A raw ext2/3/4 file system without a partition table.
    case filesystemImage

    /// Looks at the first bytes of `path`.
    public static func detect(path: String) throws -> BootImageKind {
        guard let handle = FileHandle(forReadingAtPath: path) else {
            throw RootfsError("cannot read \(path)", hint: "pass an initrd or a raw disk image made by rootfs")
        }
        defer { try? handle.close() }
        let head = [UInt8]((try? handle.read(upToCount: 2048)) ?? Data())
        guard let kind = detect(head: head) else {
            throw RootfsError("\(path) is neither an initrd nor a disk image",
                              hint: "expected a cpio archive (plain, gzip, zstd, xz, lz4 or bzip2) or a raw disk image with an MBR",
                              details: ["first bytes: " + head.prefix(8).map { String(format: "%02x", $0) }.joined(separator: " ")])
        }
        return kind
    }

    /// Classifies the first (up to 2048) bytes of an image.
    public static func detect(head: [UInt8]) -> BootImageKind? {
        func starts(_ magic: [UInt8]) -> Bool { head.count >= magic.count && Array(head.prefix(magic.count)) == magic }
        // Archive and compression magics first: they are checked at offset 0.
        let initrdMagics: [[UInt8]] = [
            Array("070701".utf8), Array("070702".utf8), Array("070707".utf8),  // cpio newc, crc, odc
            [0xc7, 0x71], [0x71, 0xc7],                                        // old binary cpio
            [0x1f, 0x8b],                                                      // gzip
            [0x28, 0xb5, 0x2f, 0xfd],                                          // zstd
            [0xfd, 0x37, 0x7a, 0x58, 0x5a, 0x00],                              // xz
            [0x02, 0x21, 0x4c, 0x18],                                          // lz4 legacy
            [0x42, 0x5a, 0x68],                                                // bzip2
            [0x5d, 0x00, 0x00],                                                // lzma
        ]
        if initrdMagics.contains(where: starts) { return .initrd }
        if head.count >= 512 && head[510] == 0x55 && head[511] == 0xaa { return .partitionedDisk }
        // ext2/3/4 superblock at 1024, magic 0xEF53 at offset 56 within it.
        if head.count >= 1082 && head[1080] == 0x53 && head[1081] == 0xef { return .filesystemImage }
        return nil
    }

    /// The guest's root device for a disk on the NVMe controller QEMU gets.
    public var rootDevice: String? {
        switch self {
        case .initrd: return nil
        case .partitionedDisk: return "/dev/nvme0n1p1"
        case .filesystemImage: return "/dev/nvme0n1"
        }
    }
}
