import RootfsSupport

/// What a VHDX file says about a parent (a differencing disk), read as MS-VHDX lays it out:
/// the region table at 192 KiB names the metadata region; its table lists the items; the
/// file parameters' HasParent bit (bit 1 of the second u32) or a parent locator item means
/// another file would be read. Every offset read from the file is checked.
public enum VHDXProbe {
    static let regionTableOffset = 192 << 10
    static let parentLocatorGUID = DerivedGUID.constant(0xA8D3_5F2D, 0xB30B, 0x454D, [0xAB, 0xF7, 0xD3, 0xD8, 0x48, 0x34, 0xAB, 0x0C])

    /// Whether the VHDX read through `read(offset, count)` has a parent. Throws on a malformed table.
    public static func hasParent(what: String, read: (Int, Int) -> [UInt8]) throws -> Bool {
        let table = read(regionTableOffset, 64 << 10)
        let regions = BinaryDecoder(table, what: "the VHDX region table of \(what)")
        guard table.count >= 16, Array(table.prefix(4)) == Array("regi".utf8) else {
            throw RootfsError("\(what) has no VHDX region table at 192 KiB", hint: "is the VHDX complete? `qemu-img check -f vhdx` says more")
        }
        let count = Int(try regions.u32(8))
        guard count <= 2047 else { throw RootfsError("\(what): its VHDX region table claims \(count) entries (at most 2047)") }
        var metadata: (offset: Int, length: Int)?
        for i in 0..<count {
            let entry = try Checked.add(16, try Checked.multiply(i, 32, "a VHDX region entry"), "a VHDX region entry")
            if try regions.bytes(at: entry, count: 16) == VHDXWriter.metadataGUID {
                guard let offset = Int(exactly: try regions.u64(entry + 16)) else { throw RootfsError("\(what): its VHDX metadata offset does not fit") }
                metadata = (offset, Int(try regions.u32(entry + 24)))
            }
        }
        guard let metadata else { throw RootfsError("\(what) has no VHDX metadata region") }
        let items = read(metadata.offset, min(metadata.length, 1 << 20))
        let meta = BinaryDecoder(items, what: "the VHDX metadata of \(what)")
        guard items.count >= 32, Array(items.prefix(8)) == Array("metadata".utf8) else {
            throw RootfsError("\(what): its VHDX metadata region has no metadata table")
        }
        let entries = Int(try meta.u16(10))
        guard entries <= 2047 else { throw RootfsError("\(what): its VHDX metadata table claims \(entries) entries (at most 2047)") }
        for i in 0..<entries {
            let entry = try Checked.add(32, try Checked.multiply(i, 32, "a VHDX metadata entry"), "a VHDX metadata entry")
            let id = try meta.bytes(at: entry, count: 16)
            if id == parentLocatorGUID { return true }
            if id == VHDXWriter.fileParametersGUID {
                let item = try Checked.add(Int(try meta.u32(entry + 16)), 4, "the VHDX file parameters")
                if try meta.u32(item) & 0b10 != 0 { return true }
            }
        }
        return false
    }
}
