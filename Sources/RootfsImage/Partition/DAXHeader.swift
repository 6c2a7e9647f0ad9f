import RootfsSupport

/// `struct nd_pfn_sb`: the info block the Linux nvdimm driver looks for 4 KiB into a
/// namespace. When it finds a valid one (signature, checksum, a parent UUID matching the
/// namespace's: zero for a label-less NVDIMM such as QEMU's), it maps the namespace from
/// `dataOffset` on with struct pages, so file systems on it can use DAX. Kata's nsdax tool
/// writes one with these values; this is our own encoding of the same layout.
///
/// Layout (little-endian): signature[16] uuid[16] parent_uuid[16] flags:u32
/// version_major:u16 version_minor:u16 dataoff:u64 npfns:u64 mode:u32 start_pad:u32
/// end_trunc:u32 align:u32, zeros, checksum:u64 in the last 8 of 4096 bytes.
public struct PFNInfoBlock: Sendable, Equatable {
    /// Where the page structures live: PFN_MODE_RAM (in the guest's memory) is what Kata uses.
    public enum Mode: UInt32, Sendable, Equatable { case none = 0, ram = 1, pmem = 2 }

    public static let size = 4096
    /// "NVDIMM_PFN_INFO" and its NUL.
    public static let signature: [UInt8] = Array("NVDIMM_PFN_INFO".utf8) + [0]

    enum Offset {
        static let uuid = 16, parentUUID = 32, flags = 48, versionMajor = 52, versionMinor = 54
        static let dataOffset = 56, pageFrames = 64, mode = 72, startPad = 76, endTruncation = 80
        static let alignment = 84, checksum = 4088
    }

    public var uuid = [UInt8](repeating: 0, count: 16)
    /// Zero: the UUID of a label-less namespace, as the driver compares it.
    public var parentUUID = [UInt8](repeating: 0, count: 16)
    public var flags: UInt32 = 0
    public var versionMajor: UInt16 = 0
    /// 2: the first version that records `alignment` (nsdax's).
    public var versionMinor: UInt16 = 2
    /// Where the mapped data starts, from the start of the namespace.
    public var dataOffset: UInt64
    /// 0: left to the driver, which derives it from the namespace's size.
    public var pageFrames: UInt64 = 0
    public var mode: Mode = .ram
    public var startPad: UInt32 = 0
    public var endTruncation: UInt32 = 0
    /// The mapping's alignment (2 MiB: huge pages).
    public var alignment: UInt32

    public init(dataOffset: UInt64, alignment: UInt32) {
        self.dataOffset = dataOffset
        self.alignment = alignment
    }

    /// The 4096 bytes, checksum included (computed with the checksum field zero, as the driver does).
    public func encoded() -> [UInt8] {
        var e = BinaryEncoder(zeros: Self.size)
        e.put(Self.signature, at: 0)
        e.put(uuid, at: Offset.uuid)
        e.put(parentUUID, at: Offset.parentUUID)
        e.put(flags, at: Offset.flags)
        e.put(versionMajor, at: Offset.versionMajor)
        e.put(versionMinor, at: Offset.versionMinor)
        e.put(dataOffset, at: Offset.dataOffset)
        e.put(pageFrames, at: Offset.pageFrames)
        e.put(mode.rawValue, at: Offset.mode)
        e.put(startPad, at: Offset.startPad)
        e.put(endTruncation, at: Offset.endTruncation)
        e.put(alignment, at: Offset.alignment)
        e.put(Self.fletcher64(e.bytes), at: Offset.checksum)
        return e.bytes
    }

    /// Reads an info block, refusing one whose signature or checksum is wrong (what the driver refuses too).
    public init(decoding bytes: [UInt8], what: String) throws {
        let d = BinaryDecoder(bytes, what: what)
        guard try d.bytes(at: 0, count: 16) == Self.signature else {
            throw RootfsError("\(what) has no NVDIMM_PFN_INFO signature")
        }
        let stored = try d.u64(Offset.checksum)
        var zeroed = try d.bytes(at: 0, count: Self.size)
        zeroed.replaceSubrange(Offset.checksum..<Self.size, with: [UInt8](repeating: 0, count: 8))
        guard Self.fletcher64(zeroed) == stored else {
            throw RootfsError("\(what): the NVDIMM_PFN_INFO checksum does not match its content", hint: "the DAX header is corrupt: write the image again")
        }
        guard let mode = Mode(rawValue: try d.u32(Offset.mode)) else {
            throw RootfsError("\(what): unknown NVDIMM_PFN_INFO mode \(try d.u32(Offset.mode))")
        }
        self.init(dataOffset: try d.u64(Offset.dataOffset), alignment: try d.u32(Offset.alignment))
        uuid = try d.bytes(at: Offset.uuid, count: 16)
        parentUUID = try d.bytes(at: Offset.parentUUID, count: 16)
        flags = try d.u32(Offset.flags)
        versionMajor = try d.u16(Offset.versionMajor)
        versionMinor = try d.u16(Offset.versionMinor)
        pageFrames = try d.u64(Offset.pageFrames)
        self.mode = mode
        startPad = try d.u32(Offset.startPad)
        endTruncation = try d.u32(Offset.endTruncation)
    }

    /// Fletcher-64 over little-endian 32-bit words (the nvdimm driver's nd_fletcher64).
    public static func fletcher64(_ bytes: [UInt8]) -> UInt64 {
        var lo: UInt32 = 0
        var hi: UInt32 = 0
        var i = 0
        while i + 4 <= bytes.count {
            let word = UInt32(bytes[i]) | UInt32(bytes[i + 1]) << 8 | UInt32(bytes[i + 2]) << 16 | UInt32(bytes[i + 3]) << 24
            lo = lo &+ word
            hi = hi &+ lo
            i += 4
        }
        return UInt64(hi) << 32 | UInt64(lo)
    }
}

/// Kata's NVDIMM/DAX layout (image_builder.sh's set_dax_header with nsdax): the image starts
/// with a 2 MiB header, then the ordinary disk image (its own MBR, its partition at 1 MiB):
///
///     0: MBR #1, its partition at 3 MiB (header + 1 MiB) to the end of the disk
///     4 KiB: the PFN info block, data offset and alignment 2 MiB
///     2 MiB: MBR #2, its partition at 1 MiB of the inner image (the same bytes)
///
/// A guest whose nvdimm driver maps the namespace with DAX sees the inner image from
/// 2 MiB on and reads MBR #2; any other reader (virtio-blk, a raw NVDIMM) reads MBR #1.
/// Both tables name the same partition, /dev/pmem0p1 or /dev/vda1.
public struct DAXHeader: Sendable, Equatable {
    public static let size: Int64 = 2 << 20
    /// DAX huge pages: the mapping, and so the namespace's end, on 2 MiB.
    public static let alignment: Int64 = 2 << 20
    /// The nvdimm driver reads the info block at this namespace-relative offset (SZ_4K).
    public static let infoBlockOffset = 4096
    /// What `encoded()` covers: the MBR and the info block. The rest of the 2 MiB is zeros,
    /// which a freshly created image already holds.
    public static let encodedBytes = infoBlockOffset + PFNInfoBlock.size

    public var mbr: MBR
    public var infoBlock: PFNInfoBlock

    /// The header of a disk whose inner image has its partition at `innerPartitionOffset`
    /// (from the inner image's start), holding `partitionBytes`. `what` names the disk in errors.
    public init(innerPartitionOffset: Int64, partitionBytes: Int64, signature: UInt32, what: String) throws {
        let start = try Checked.add(Self.size, innerPartitionOffset, "the partition offset of \(what) behind its DAX header")
        mbr = try MBR(diskSignature: signature, partitionStart: start, partitionBytes: partitionBytes, what: what)
        infoBlock = PFNInfoBlock(dataOffset: UInt64(Self.size), alignment: UInt32(Self.alignment))
    }

    /// The header's first `encodedBytes`: MBR #1, zeros, the info block.
    public func encoded() -> [UInt8] {
        var e = BinaryEncoder(zeros: Self.encodedBytes)
        e.put(mbr.bytes, at: 0)
        e.put(infoBlock.encoded(), at: Self.infoBlockOffset)
        return e.bytes
    }

    /// The info block at 4 KiB of a disk's first bytes, when it is a valid one (nil otherwise).
    public static func infoBlock(inHead head: [UInt8], what: String) -> PFNInfoBlock? {
        guard head.count >= encodedBytes else { return nil }
        return try? PFNInfoBlock(decoding: Array(head[infoBlockOffset..<encodedBytes]), what: what)
    }
}
