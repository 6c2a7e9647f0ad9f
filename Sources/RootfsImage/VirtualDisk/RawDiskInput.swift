import RootfsSupport
import Glibc

/// A raw disk (or bare file system) read once, in order, in 1 MiB chunks by
/// the VHDX and dynamic VHD writers: each chunk comes with whether it is all
/// zeros (a block of zero chunks is not stored), and the identity of the input
/// (for the reproducible GUIDs) is computed on the way without a second pass.
struct RawDiskInput: ~Copyable {
    static let chunkSize = 1 << 20
    /// lseek's SEEK_DATA (Linux, <unistd.h> with _GNU_SOURCE, which Swift's Glibc module does not define).
    static let seekData: Int32 = 3

    let fd: OwnedFileDescriptor
    /// The input's size in bytes.
    let size: Int64
    /// The virtual disk's size: `size` rounded up to whole 512-byte sectors
    /// (the padding reads as zeros, as a file system would see past its end).
    let virtualSize: UInt64
    private var hasher = SHA256()
    private var next: Int64 = 0
    /// Where the input's next data starts (SEEK_DATA): chunks before it are holes, read as zeros
    /// without reading them. Int64.max past the last data; -1 when not known yet.
    private var nextData: Int64 = -1

    /// `maximum`: the largest virtual size the format holds, with its name for the error.
    init(path: String, format: String, maximum: UInt64, maximumText: String) throws {
        let file = try OwnedFileDescriptor(path: path, flags: O_RDONLY)
        let size = try file.size()
        guard size > 0 else { throw RootfsError("\(path) is empty: there is no disk to write as \(format)") }
        let rounded = try Checked.add(UInt64(size), 511, "the size of \(path)") / 512 * 512
        guard rounded <= maximum else {
            throw RootfsError("\(path) is \(size) bytes; \(format) holds at most \(maximumText)",
                              hint: "use a smaller disk or another format (raw, qcow2)")
        }
        self.size = size
        virtualSize = rounded
        fd = file
    }

    /// The bytes added to reach a whole sector (0 when the input is whole sectors).
    var paddedBytes: Int64 { Int64(virtualSize) - size }

    /// The chunk at `offset` (chunks must be asked for in order): at most 1 MiB and never past
    /// the input's end (empty there); `zero` when every byte is 0.
    mutating func chunk(at offset: Int64, count: Int) throws -> (bytes: [UInt8], zero: Bool) {
        precondition(offset == next && count <= Self.chunkSize, "RawDiskInput: chunks are read in order")
        let want = Int(max(0, min(Int64(count), size - offset)))
        next = offset + Int64(count)
        guard want > 0 else { return ([], true) }
        if nextData < offset {
            // A sparse input (our own raw images leave free space as holes) is not read where it has none.
            let found = lseek(fd.raw, off_t(offset), Self.seekData)
            nextData = found >= 0 ? Int64(found) : errno == ENXIO ? Int64.max : offset
        }
        if nextData >= offset + Int64(want) { return ([], true) }
        let bytes = try fd.read(count: want, at: offset)
        guard bytes.count == want else { throw RootfsError("\(fd.name) ended early (it changed while being read?)") }
        let zero = bytes.withUnsafeBytes { Self.isZero($0) }
        if !zero {
            // Zero chunks are left out of the identity: their absence and the size stand for them.
            // Each data chunk counts by its offset and its XXH64 (SHA256 here is 150 MB/s and would
            // be most of the writer's time; the GUIDs need no cryptographic strength).
            var entry = BinaryEncoder(order: .little)
            entry.append(UInt64(offset))
            entry.append(XXH64.hash(bytes))
            hasher.update(entry.bytes)
        }
        return (bytes, zero)
    }

    /// The input's identity: sha256 of its size and of every non-zero chunk's offset and XXH64.
    mutating func identity() -> [UInt8] {
        var h = hasher
        var length = BinaryEncoder(order: .little)
        length.append(UInt64(size))
        h.update(length.bytes)
        return h.finalize()
    }

    static func isZero(_ bytes: UnsafeRawBufferPointer) -> Bool {
        var i = 0
        let words = bytes.count / 8
        while i < words {
            if bytes.loadUnaligned(fromByteOffset: i * 8, as: UInt64.self) != 0 { return false }
            i += 1
        }
        for j in (words * 8)..<bytes.count where bytes[j] != 0 { return false }
        return true
    }
}
