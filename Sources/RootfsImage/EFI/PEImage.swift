import RootfsSupport

/// The headers of a PE/COFF image (an EFI application: systemd's stub, a
/// kernel built with the EFI stub), read with every offset and size checked:
/// the stub and the kernel come from packages and the user's flags, and a
/// truncated or hostile file must be a clear error, not a trap.
public struct PEImage: Sendable, Equatable {
    /// One 40-byte entry of the section table.
    public struct Section: Sendable, Equatable {
        public var name: [UInt8]            // 8 bytes, NUL-padded
        public var virtualSize: UInt32
        public var virtualAddress: UInt32
        public var sizeOfRawData: UInt32
        public var pointerToRawData: UInt32
        public var characteristics: UInt32

        public static let size = 40
        /// IMAGE_SCN_CNT_INITIALIZED_DATA | IMAGE_SCN_MEM_READ: what ukify gives its data sections.
        public static let readOnlyData: UInt32 = 0x4000_0040

        public var nameText: String { String(decoding: name.prefix { $0 != 0 }, as: UTF8.self) }

        public init(name: String, virtualSize: UInt32, virtualAddress: UInt32, sizeOfRawData: UInt32,
                    pointerToRawData: UInt32, characteristics: UInt32 = Section.readOnlyData) {
            var bytes = Array(name.utf8.prefix(8))
            bytes += [UInt8](repeating: 0, count: 8 - bytes.count)
            self.name = bytes
            self.virtualSize = virtualSize
            self.virtualAddress = virtualAddress
            self.sizeOfRawData = sizeOfRawData
            self.pointerToRawData = pointerToRawData
            self.characteristics = characteristics
        }

        init(_ d: BinaryDecoder, at o: Int) throws {
            name = try d.bytes(at: o, count: 8)
            virtualSize = try d.u32(o + 8)
            virtualAddress = try d.u32(o + 12)
            sizeOfRawData = try d.u32(o + 16)
            pointerToRawData = try d.u32(o + 20)
            characteristics = try d.u32(o + 36)
        }

        /// The on-disk entry (no relocations or line numbers: image sections have none).
        public var bytes: [UInt8] {
            var e = BinaryEncoder(zeros: Self.size)
            e.put(name, at: 0)
            e.put(virtualSize, at: 8)
            e.put(virtualAddress, at: 12)
            e.put(sizeOfRawData, at: 16)
            e.put(pointerToRawData, at: 20)
            e.put(characteristics, at: 36)
            return e.bytes
        }
    }

    /// Offset of "PE\0\0" (the DOS header's e_lfanew).
    public var peOffset: Int
    public var machine: UInt16
    public var numberOfSections: Int
    public var sizeOfOptionalHeader: Int
    /// 0x10b (PE32) or 0x20b (PE32+).
    public var optionalMagic: UInt16
    public var sectionAlignment: UInt32
    public var fileAlignment: UInt32
    public var sizeOfImage: UInt32
    public var sizeOfHeaders: UInt32
    public var subsystem: UInt16
    /// The certificate table (data directory 4): a signature over the image, invalid once it changes.
    public var certificateTable: (offset: UInt32, size: UInt32)
    public var sections: [Section]

    public static let machineX86_64: UInt16 = 0x8664
    public static let subsystemEFIApplication: UInt16 = 10

    public var coffOffset: Int { peOffset + 4 }
    public var optionalOffset: Int { peOffset + 24 }
    public var sectionTableOffset: Int { optionalOffset + sizeOfOptionalHeader }
    /// Fields of the optional header at the same offsets in PE32 and PE32+.
    public var sizeOfInitializedDataOffset: Int { optionalOffset + 8 }
    public var sizeOfImageOffset: Int { optionalOffset + 56 }
    public var checksumOffset: Int { optionalOffset + 64 }
    public var dataDirectoryOffset: Int { optionalOffset + (optionalMagic == 0x20b ? 112 : 96) }

    public static func == (a: PEImage, b: PEImage) -> Bool {
        a.peOffset == b.peOffset && a.sections == b.sections && a.sizeOfImage == b.sizeOfImage
    }

    /// Parses the headers from the first bytes of a file (4 KiB is plenty for
    /// a stub or a kernel; the section table must lie within `head`).
    /// `what` names the file in errors.
    public init(head: [UInt8], what: String) throws {
        let d = BinaryDecoder(head, what: what)
        guard head.count >= 64, head[0] == 0x4d, head[1] == 0x5a else {
            throw RootfsError("\(what) is not a PE/COFF image (no \"MZ\" header)")
        }
        peOffset = Int(try d.u32(0x3c))
        guard (try? d.bytes(at: peOffset, count: 4)) == [0x50, 0x45, 0, 0] else {
            throw RootfsError("\(what) is not a PE/COFF image (no \"PE\" header at offset \(peOffset))")
        }
        let coff = peOffset + 4
        machine = try d.u16(coff)
        numberOfSections = Int(try d.u16(coff + 2))
        sizeOfOptionalHeader = Int(try d.u16(coff + 16))
        let opt = peOffset + 24
        optionalMagic = try d.u16(opt)
        guard optionalMagic == 0x10b || optionalMagic == 0x20b else {
            throw RootfsError("\(what) has an unknown optional header (magic 0x\(String(optionalMagic, radix: 16)))")
        }
        sectionAlignment = try d.u32(opt + 32)
        fileAlignment = try d.u32(opt + 36)
        sizeOfImage = try d.u32(opt + 56)
        sizeOfHeaders = try d.u32(opt + 60)
        subsystem = try d.u16(opt + 68)
        func isPowerOfTwo(_ v: UInt32) -> Bool { v != 0 && v & (v - 1) == 0 }
        guard isPowerOfTwo(sectionAlignment), isPowerOfTwo(fileAlignment), fileAlignment <= sectionAlignment || sectionAlignment < 4096 else {
            throw RootfsError("\(what) has invalid alignments (section \(sectionAlignment), file \(fileAlignment))")
        }
        let directories = opt + (optionalMagic == 0x20b ? 112 : 96)
        let directoryCount = Int(try d.u32(directories - 4))
        if directoryCount > 4 {
            certificateTable = (try d.u32(directories + 32), try d.u32(directories + 36))
        } else {
            certificateTable = (0, 0)
        }
        let table = try Checked.add(opt, sizeOfOptionalHeader, "the section table offset of \(what)")
        guard numberOfSections <= 96 else { throw RootfsError("\(what) claims \(numberOfSections) sections (at most 96)") }
        sections = try (0..<numberOfSections).map { try Section(d, at: table + $0 * Section.size) }
        for s in sections {
            _ = try Checked.add(s.pointerToRawData, s.sizeOfRawData, "section \(s.nameText) of \(what)")
            _ = try Checked.add(s.virtualAddress, s.virtualSize, "section \(s.nameText) of \(what)")
        }
    }

    /// The PE checksum (as ImageHlp's CheckSumMappedFile computes it): a 16-bit
    /// one's-complement-style sum of the file with the checksum field as zero,
    /// folded, plus the file length. Fed in chunks of even length.
    public struct Checksum {
        var sum: UInt64 = 0
        var length: UInt64 = 0
        let fieldOffset: UInt64

        public init(checksumFieldOffset: Int) { fieldOffset = UInt64(checksumFieldOffset) }

        public mutating func update(_ chunk: UnsafeRawBufferPointer) {
            var i = 0
            while i < chunk.count {
                let position = length + UInt64(i)
                var word = UInt64(chunk[i])
                if i + 1 < chunk.count { word |= UInt64(chunk[i + 1]) << 8 }
                if position < fieldOffset || position >= fieldOffset + 4 {
                    sum += word
                    sum = (sum & 0xffff) + (sum >> 16)
                }
                i += 2
            }
            length += UInt64(chunk.count)
        }

        public var value: UInt32 {
            var s = sum
            s = (s & 0xffff) + (s >> 16)
            s = (s & 0xffff) + (s >> 16)
            return UInt32(truncatingIfNeeded: (s & 0xffff) + length)
        }
    }
}

func alignUp<T: FixedWidthInteger>(_ value: T, _ alignment: T, _ what: @autoclosure () -> String) throws -> T {
    let sum = try Checked.add(value, alignment - 1, what())
    return sum / alignment * alignment
}
