import RootfsSupport

/// Walks the blocks of a raw deflate stream (RFC 1951) without inflating it: it decodes
/// every Huffman code to find where each block ends, but copies nothing and keeps no window.
///
/// Why: libdeflate compresses a whole buffer at a time and always ends it with a final
/// block (BFINAL set), with no flush to stop on a byte boundary mid-stream as zlib's
/// Z_SYNC_FLUSH does. To lay the pieces of independent blocks end to end as one deflate
/// stream (one gzip member: the kernel's initramfs reader wants the cpio whole inside one
/// member), `makeContinuable` clears that final bit, which sits wherever the last block
/// happens to start, and appends what a sync flush would have written.
enum DeflateBlockWalker {
    /// Bit offsets (LSB first, as deflate counts) in the stream.
    struct Ends: Equatable {
        /// The first bit of the final block's header: its BFINAL bit.
        var finalHeaderBit: Int
        /// The bit just after the final block's end-of-block code.
        var endBit: Int
    }

    /// Finds the final block and its end; throws if `bytes` is not one whole deflate stream.
    static func walk(_ bytes: UnsafeRawBufferPointer) throws -> Ends {
        var bits = BitReader(bytes)
        while true {
            let header = bits.consumed
            let final = bits.take(1)
            switch bits.take(2) {
            case 0:
                try bits.skipStored()
            case 1:
                try skipCodes(&bits, literals: fixedTables.literals, distances: fixedTables.distances)
            case 2:
                let tables = try readDynamicTables(&bits)
                try skipCodes(&bits, literals: tables.literals, distances: tables.distances)
            default:
                throw RootfsError("deflate: a block of the reserved type 3 at bit \(header)")
            }
            guard bits.consumed <= bytes.count * 8 else {
                throw RootfsError("deflate: the stream ends inside a block (\(bytes.count) bytes)")
            }
            if final == 1 {
                guard (bits.consumed + 7) / 8 == bytes.count else {
                    throw RootfsError("deflate: \(bytes.count - (bits.consumed + 7) / 8) bytes follow the final block")
                }
                return Ends(finalHeaderBit: header, endBit: bits.consumed)
            }
        }
    }

    /// Turns a whole raw deflate stream into one that another stream can follow: the final
    /// block is made an ordinary one, and an empty stored block (header bits 000, zero padding
    /// to the byte, LEN 0000, NLEN FFFF: a sync flush's marker) ends it on a byte boundary.
    static func makeContinuable(_ piece: inout [UInt8]) throws {
        let ends = try piece.withUnsafeBytes { try walk($0) }
        piece[ends.finalHeaderBit / 8] &= ~(UInt8(1) << UInt8(ends.finalHeaderBit % 8))
        let used = ends.endBit % 8
        if used != 0 {
            // The padding after the end-of-block code becomes the stored block's header: zero it.
            piece[piece.count - 1] &= UInt8((1 << used) - 1)
        }
        // The 3 header bits fit in the last byte's padding, or need a byte of their own.
        if used == 0 || 8 - used < 3 { piece.append(0) }
        piece += [0x00, 0x00, 0xff, 0xff]
    }

    // MARK: - Codes

    /// The codes of one block up to its end-of-block code. The hot loop of the walk: the bit
    /// state is kept in locals and the look-up tables are read through pointers; a code too
    /// long for the table goes through `HuffmanTable.decodeSlowly` with the state written back.
    private static func skipCodes(_ bits: inout BitReader, literals: HuffmanTable, distances: HuffmanTable) throws {
        let mask = (1 << HuffmanTable.fastBits) - 1
        try literals.fast.withUnsafeBufferPointer { literalTable in
            try distances.fast.withUnsafeBufferPointer { distanceTable in
                while true {
                    // 57+ bits after a refill: a length code, its extra bits, a distance code and
                    // its extra bits take at most 15 + 5 + 15 + 13 = 48.
                    if bits.available < 48 {
                        bits.refill()
                        guard bits.inBounds else { throw RootfsError("deflate: the stream ends inside a block") }
                    }
                    var symbol: Int
                    let entry = literalTable[Int(truncatingIfNeeded: bits.buffer) & mask]
                    if entry != 0 {
                        bits.drop(Int(entry & 15))
                        symbol = Int(entry >> 4)
                    } else {
                        symbol = try literals.decodeSlowly(&bits)
                    }
                    if symbol < 256 {
                        // Another literal needs no refill (57 - 15 bits are left): most symbols are literals.
                        let next = literalTable[Int(truncatingIfNeeded: bits.buffer) & mask]
                        guard next != 0 else { continue }
                        bits.drop(Int(next & 15))
                        symbol = Int(next >> 4)
                        if symbol < 256 { continue }
                    }
                    if symbol == 256 { return }
                    let lengthIndex = symbol - 257
                    guard lengthIndex < 29 else { throw RootfsError("deflate: an invalid length code \(symbol)") }
                    if bits.available < 33 {
                        bits.refill()
                        guard bits.inBounds else { throw RootfsError("deflate: the stream ends inside a block") }
                    }
                    bits.drop(Int(lengthExtraBits[lengthIndex]))
                    var distance: Int
                    let distanceEntry = distanceTable[Int(truncatingIfNeeded: bits.buffer) & mask]
                    if distanceEntry != 0 {
                        bits.drop(Int(distanceEntry & 15))
                        distance = Int(distanceEntry >> 4)
                    } else {
                        distance = try distances.decodeSlowly(&bits)
                    }
                    guard distance < 30 else { throw RootfsError("deflate: an invalid distance code \(distance)") }
                    bits.drop(Int(distanceExtraBits[distance]))
                }
            }
        }
    }

    private static let lengthExtraBits: [UInt8] = [0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2,
                                                   3, 3, 3, 3, 4, 4, 4, 4, 5, 5, 5, 5, 0]
    private static let distanceExtraBits: [UInt8] = [0, 0, 0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5, 6, 6,
                                                     7, 7, 8, 8, 9, 9, 10, 10, 11, 11, 12, 12, 13, 13]
    /// The order in which a dynamic header gives the code length code's lengths.
    private static let codeLengthOrder = [16, 17, 18, 0, 8, 7, 9, 6, 10, 5, 11, 4, 12, 3, 13, 2, 14, 1, 15]

    private static let fixedTables: (literals: HuffmanTable, distances: HuffmanTable) = {
        var lengths = [UInt8](repeating: 8, count: 288)
        for i in 144..<256 { lengths[i] = 9 }
        for i in 256..<280 { lengths[i] = 7 }
        // The fixed codes are valid by the RFC's construction.
        return (try! HuffmanTable(lengths[...]), try! HuffmanTable([UInt8](repeating: 5, count: 30)[...]))
    }()

    private static func readDynamicTables(_ bits: inout BitReader) throws -> (literals: HuffmanTable, distances: HuffmanTable) {
        let literalCount = Int(bits.take(5)) + 257
        let distanceCount = Int(bits.take(5)) + 1
        let codeLengthCount = Int(bits.take(4)) + 4
        guard literalCount <= 286, distanceCount <= 30 else {
            throw RootfsError("deflate: a dynamic header with \(literalCount) literal and \(distanceCount) distance codes")
        }
        var codeLengthLengths = [UInt8](repeating: 0, count: 19)
        for i in 0..<codeLengthCount { codeLengthLengths[codeLengthOrder[i]] = UInt8(bits.take(3)) }
        let codeLengths = try HuffmanTable(codeLengthLengths[...])
        let total = literalCount + distanceCount
        var lengths = [UInt8](repeating: 0, count: total)
        var i = 0
        while i < total {
            bits.refill()
            guard bits.inBounds else { throw RootfsError("deflate: the stream ends inside a block header") }
            let symbol = try codeLengths.decode(&bits)
            var repeated: UInt8 = 0, times = 0
            switch symbol {
            case 0..<16:
                lengths[i] = UInt8(symbol); i += 1; continue
            case 16:
                guard i > 0 else { throw RootfsError("deflate: a repeated code length with nothing before it") }
                repeated = lengths[i - 1]; times = 3 + Int(bits.take(2))
            case 17: times = 3 + Int(bits.take(3))
            default: times = 11 + Int(bits.take(7))
            }
            guard i + times <= total else { throw RootfsError("deflate: code lengths run past the header's count") }
            for j in i..<(i + times) { lengths[j] = repeated }
            i += times
        }
        guard lengths[256] != 0 else { throw RootfsError("deflate: a block without an end-of-block code") }
        return (try HuffmanTable(lengths[0..<literalCount]), try HuffmanTable(lengths[literalCount...]))
    }
}

/// Deflate's bits, least significant first, 64 at a time. Past the end it reads zeros
/// (`inBounds` turns false), so the hot loop checks once per refill, not per bit.
private struct BitReader {
    let base: UnsafePointer<UInt8>?
    let count: Int
    /// The next byte to load (it runs past `count` while zeros are read past the end).
    var position = 0
    var buffer: UInt64 = 0
    var available = 0

    init(_ bytes: UnsafeRawBufferPointer) {
        base = bytes.baseAddress?.assumingMemoryBound(to: UInt8.self)
        count = bytes.count
    }

    /// Bits taken so far.
    var consumed: Int { position * 8 - available }
    var inBounds: Bool { consumed <= count * 8 }

    mutating func refill() {
        if position &+ 8 <= count, let base {
            // Eight bytes at once, keeping the whole ones that fit (the usual branch-free refill).
            let word = UInt64(littleEndian: UnsafeRawPointer(base + position).loadUnaligned(as: UInt64.self))
            buffer |= word << UInt64(available)
            position += (63 - available) >> 3
            available |= 56
            return
        }
        while available <= 56 {
            if position < count, let base { buffer |= UInt64(base[position]) << UInt64(available) }
            position += 1
            available += 8
        }
    }

    /// `n` (0...32) bits as a number.
    mutating func take(_ n: Int) -> UInt32 {
        if available < n { refill() }
        let value = UInt32(truncatingIfNeeded: buffer & ((1 << UInt64(n)) &- 1))
        buffer >>= UInt64(n)
        available -= n
        return value
    }

    mutating func drop(_ n: Int) {
        buffer >>= UInt64(n)
        available -= n
    }

    /// A stored block after its 3 header bits: padding to the byte, LEN, NLEN, LEN bytes.
    mutating func skipStored() throws {
        _ = take((8 - consumed % 8) % 8)
        let length = take(16), complement = take(16)
        guard length == ~complement & 0xffff else {
            throw RootfsError("deflate: a stored block's length \(length) does not match its complement \(complement)")
        }
        let next = consumed / 8 + Int(length)
        guard next <= count else { throw RootfsError("deflate: a stored block of \(length) bytes runs past the end") }
        position = next
        buffer = 0
        available = 0
    }
}

/// A canonical Huffman code for decoding: codes of up to `fastBits` bits in one table look-up,
/// longer ones (rare: the least frequent symbols) bit by bit, the way RFC 1951 defines them.
private struct HuffmanTable {
    static let fastBits = 10
    /// Indexed by the next `fastBits` bits: symbol << 4 | length, or 0 for a longer (or no) code.
    private(set) var fast = [UInt16](repeating: 0, count: 1 << fastBits)
    private var counts = [Int](repeating: 0, count: 16)
    /// The symbols in code order.
    private var symbols: [UInt16]

    init(_ lengths: ArraySlice<UInt8>) throws {
        for length in lengths { counts[Int(length)] += 1 }
        counts[0] = 0
        var left = 1
        for length in 1...15 {
            left = left << 1 - counts[length]
            guard left >= 0 else { throw RootfsError("deflate: an over-subscribed Huffman code") }
        }
        var offsets = [Int](repeating: 0, count: 16)
        for length in 1..<15 { offsets[length + 1] = offsets[length] + counts[length] }
        symbols = [UInt16](repeating: 0, count: lengths.count)
        var nextCode = [Int](repeating: 0, count: 16)
        var code = 0
        for length in 1...15 {
            code = (code + counts[length - 1]) << 1
            nextCode[length] = code
        }
        for (symbol, length8) in zip(0..., lengths) where length8 != 0 {
            let length = Int(length8)
            symbols[offsets[length]] = UInt16(symbol)
            offsets[length] += 1
            let canonical = nextCode[length]
            nextCode[length] += 1
            guard length <= Self.fastBits else { continue }
            // Deflate sends a code's most significant bit first: the table is indexed by its reverse.
            var reversed = 0
            for bit in 0..<length where canonical & (1 << bit) != 0 { reversed |= 1 << (length - 1 - bit) }
            for slot in stride(from: reversed, to: 1 << Self.fastBits, by: 1 << length) {
                fast[slot] = UInt16(symbol << 4 | length)
            }
        }
    }

    /// The next symbol; needs 15 bits available.
    func decode(_ bits: inout BitReader) throws -> Int {
        let entry = fast[Int(truncatingIfNeeded: bits.buffer) & ((1 << Self.fastBits) - 1)]
        if entry != 0 {
            bits.drop(Int(entry & 15))
            return Int(entry >> 4)
        }
        return try decodeSlowly(&bits)
    }

    /// A code longer than `fastBits` (or none): bit by bit, as RFC 1951's canonical codes are built.
    func decodeSlowly(_ bits: inout BitReader) throws -> Int {
        var code = 0, first = 0, index = 0
        for length in 1...15 {
            code |= Int(truncatingIfNeeded: bits.buffer >> UInt64(length - 1)) & 1
            let count = counts[length]
            if code - first < count {
                bits.drop(length)
                return Int(symbols[index + code - first])
            }
            index += count
            first = (first + count) << 1
            code <<= 1
        }
        throw RootfsError("deflate: a bit pattern that is no code of the block")
    }
}
