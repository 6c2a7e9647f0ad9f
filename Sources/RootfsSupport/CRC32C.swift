/// CRC-32C (Castagnoli, reflected polynomial 0x82F63B78), table-driven.
///
/// ext4 uses it raw (initial ~0, no final inversion: `checksum`); VHDX, iSCSI
/// and most others use the standard form (initial ~0, final inversion:
/// `standard`). One table serves both.
public enum CRC32C {
    static let table: [UInt32] = (0..<256).map { i -> UInt32 in
        var c = UInt32(i)
        for _ in 0..<8 { c = c & 1 != 0 ? (c >> 1) ^ 0x82F6_3B78 : c >> 1 }
        return c
    }

    /// The raw register after `bytes`, from `seed` (ext4's metadata checksums).
    public static func checksum(_ bytes: ArraySlice<UInt8>, seed: UInt32 = 0xffff_ffff) -> UInt32 {
        var c = seed
        for b in bytes { c = table[Int((c ^ UInt32(b)) & 0xff)] ^ (c >> 8) }
        return c
    }

    /// The standard CRC-32C of `bytes` ("123456789" gives 0xE3069283), as MS-VHDX specifies
    /// for its headers, region tables and log entries.
    public static func standard(_ bytes: [UInt8]) -> UInt32 {
        ~checksum(bytes[...])
    }
}
