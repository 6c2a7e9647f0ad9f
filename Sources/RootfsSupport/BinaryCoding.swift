/// Byte order of an on-disk field.
public enum ByteOrder: Sendable {
    case little, big
}

/// Builds an on-disk structure: fixed-width integers in a given byte order,
/// appended or put at an offset. The one encoder behind MBR, GPT, VHD, VHDX,
/// ext4 and verity structures, so no writer computes shifts by hand.
public struct BinaryEncoder: Sendable {
    public private(set) var bytes: [UInt8]
    public let order: ByteOrder

    public init(order: ByteOrder = .little, capacity: Int = 0) {
        self.order = order
        bytes = []
        bytes.reserveCapacity(capacity)
    }

    /// A zero-filled structure of `size` bytes, written with `put(_:at:)`.
    public init(order: ByteOrder = .little, zeros size: Int) {
        self.order = order
        bytes = [UInt8](repeating: 0, count: size)
    }

    public var count: Int { bytes.count }

    public mutating func append<T: FixedWidthInteger>(_ value: T) {
        let v = order == .little ? value.littleEndian : value.bigEndian
        withUnsafeBytes(of: v) { bytes += $0 }
    }

    public mutating func append(_ raw: [UInt8]) { bytes += raw }

    /// Appends `raw` cut or zero-padded to exactly `width` bytes (fixed-size name fields).
    public mutating func append(_ raw: [UInt8], width: Int) {
        bytes += raw.prefix(width)
        if raw.count < width { bytes += [UInt8](repeating: 0, count: width - raw.count) }
    }

    public mutating func appendZeros(_ count: Int) {
        bytes += [UInt8](repeating: 0, count: count)
    }

    /// Zero-pads to a multiple of `alignment`.
    public mutating func pad(toMultipleOf alignment: Int) {
        let r = bytes.count % alignment
        if r != 0 { appendZeros(alignment - r) }
    }

    /// Puts `value` at `offset`, growing the structure if needed.
    public mutating func put<T: FixedWidthInteger>(_ value: T, at offset: Int) {
        let v = order == .little ? value.littleEndian : value.bigEndian
        let size = MemoryLayout<T>.size
        if bytes.count < offset + size { bytes += [UInt8](repeating: 0, count: offset + size - bytes.count) }
        withUnsafeBytes(of: v) { raw in
            for i in 0..<size { bytes[offset + i] = raw[i] }
        }
    }

    public mutating func put(_ raw: [UInt8], at offset: Int) {
        if bytes.count < offset + raw.count { bytes += [UInt8](repeating: 0, count: offset + raw.count - bytes.count) }
        bytes.replaceSubrange(offset..<(offset + raw.count), with: raw)
    }
}

/// Reads an on-disk structure: every read is bounds-checked and throws a clear
/// error naming the structure instead of trapping on a short or hostile input.
public struct BinaryDecoder: Sendable {
    public let bytes: [UInt8]
    public let order: ByteOrder
    /// For errors: what is being read ("the GPT header of disk.img").
    public let what: String

    public init(_ bytes: [UInt8], order: ByteOrder = .little, what: String) {
        self.bytes = bytes
        self.order = order
        self.what = what
    }

    public init(_ bytes: ArraySlice<UInt8>, order: ByteOrder = .little, what: String) {
        self.init(Array(bytes), order: order, what: what)
    }

    public var count: Int { bytes.count }

    public func read<T: FixedWidthInteger>(_: T.Type = T.self, at offset: Int) throws -> T {
        let size = MemoryLayout<T>.size
        guard offset >= 0, offset <= bytes.count - size else {
            throw RootfsError("\(what) is truncated: \(size) bytes at offset \(offset) are past its end (\(bytes.count) bytes)")
        }
        var v: T = 0
        withUnsafeMutableBytes(of: &v) { raw in
            for i in 0..<size { raw[i] = bytes[offset + i] }
        }
        return order == .little ? T(littleEndian: v) : T(bigEndian: v)
    }

    public func u8(_ offset: Int) throws -> UInt8 { try read(UInt8.self, at: offset) }
    public func u16(_ offset: Int) throws -> UInt16 { try read(UInt16.self, at: offset) }
    public func u32(_ offset: Int) throws -> UInt32 { try read(UInt32.self, at: offset) }
    public func u64(_ offset: Int) throws -> UInt64 { try read(UInt64.self, at: offset) }

    public func bytes(at offset: Int, count: Int) throws -> [UInt8] {
        guard offset >= 0, count >= 0, offset <= bytes.count - count else {
            throw RootfsError("\(what) is truncated: \(count) bytes at offset \(offset) are past its end (\(bytes.count) bytes)")
        }
        return Array(bytes[offset..<(offset + count)])
    }
}

/// Checked arithmetic for numbers read from files and flags: an overflow is a
/// clear error naming the value, never a trap (which would skip every `defer`
/// and leave temporaries behind).
public enum Checked {
    public static func add<T: FixedWidthInteger>(_ a: T, _ b: T, _ what: @autoclosure () -> String) throws -> T {
        let (r, o) = a.addingReportingOverflow(b)
        if o { throw RootfsError("\(what()) is out of range (\(a) + \(b) overflows)") }
        return r
    }

    public static func multiply<T: FixedWidthInteger>(_ a: T, _ b: T, _ what: @autoclosure () -> String) throws -> T {
        let (r, o) = a.multipliedReportingOverflow(by: b)
        if o { throw RootfsError("\(what()) is out of range (\(a) × \(b) overflows)") }
        return r
    }

    public static func subtract<T: FixedWidthInteger>(_ a: T, _ b: T, _ what: @autoclosure () -> String) throws -> T {
        let (r, o) = a.subtractingReportingOverflow(b)
        if o { throw RootfsError("\(what()) is out of range (\(a) - \(b) overflows)") }
        return r
    }

    /// `value` converted to `T`, or an error when it does not fit.
    public static func convert<T: FixedWidthInteger, U: BinaryInteger>(_ value: U, to _: T.Type = T.self, _ what: @autoclosure () -> String) throws -> T {
        guard let r = T(exactly: value) else { throw RootfsError("\(what()) is out of range (\(value))") }
        return r
    }
}
