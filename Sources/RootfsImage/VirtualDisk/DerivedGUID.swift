import RootfsSupport

/// A GUID derived from a digest, laid out as Microsoft stores GUIDs (the first
/// three fields little-endian), marked version 4 / RFC 4122 variant so tools
/// that check the bits accept it.
enum DerivedGUID {
    static func make(_ purpose: String, identity: [UInt8], epoch: Int?) -> [UInt8] {
        var hasher = SHA256()
        hasher.update(Array("rootfs-guid:\(purpose):\(epoch.map(String.init) ?? "none"):".utf8))
        hasher.update(identity)
        var b = Array(hasher.finalize().prefix(16))
        // Byte 7 holds the high byte of data3 (little-endian): the version nibble.
        b[7] = (b[7] & 0x0f) | 0x40
        b[8] = (b[8] & 0x3f) | 0x80
        return b
    }

    /// The bytes of a GUID written as data1, data2, data3 and the eight bytes of data4.
    static func constant(_ data1: UInt32, _ data2: UInt16, _ data3: UInt16, _ data4: [UInt8]) -> [UInt8] {
        var e = BinaryEncoder(order: .little)
        e.append(data1)
        e.append(data2)
        e.append(data3)
        e.append(data4)
        return e.bytes
    }
}
