import RootfsSupport
import Dispatch
import Glibc

/// What a dm-verity device needs besides the two devices: the values
/// `veritysetup format` prints and the kernel's verity table takes.
public struct VerityParameters: Sendable, Equatable, Codable {
    /// Hex, lower case, as veritysetup prints it.
    public var rootHash: String
    /// Hex, lower case; "-" for an empty salt (veritysetup's spelling).
    public var salt: String
    public var dataBlocks: UInt64
    public var dataBlockSize: Int
    public var hashBlockSize: Int
    public var hashAlgorithm: String
    /// Where the tree starts in the hash file, in bytes.
    public var hashOffset: Int64
    /// The tree's length in bytes (0 for a single data block: the root hash is that block's hash).
    public var hashSize: Int64

    /// Kata's `root_hash_<variant>.txt` line (osbuilder's image_builder.sh writes it from
    /// veritysetup's output; the runtime's `kernel_verity_params` takes the same text).
    public var kataParameters: String {
        "root_hash=\(rootHash),salt=\(salt),data_blocks=\(dataBlocks),data_block_size=\(dataBlockSize),hash_block_size=\(hashBlockSize)"
    }
}

/// The dm-verity hash tree exactly as `veritysetup format --no-superblock
/// --hash=sha256 --data-block-size=4096 --hash-block-size=4096 --salt=HEX`
/// writes it (hash format version 1): every data block's digest is
/// sha256(salt ‖ block); 128 digests fill a 4 KiB hash block (zero-padded);
/// each hash block is hashed the same way into the level above until one
/// block remains, whose digest is the root hash. The levels are stored top
/// first: the single top block at the hash offset, the level over the data
/// blocks last (the kernel computes the same positions from the data size).
///
/// Streaming: the data is read once in 4 MiB chunks (their blocks hashed on
/// up to 4 threads) and only one 4 KiB block per level is kept (at most 10 levels for 2^64 blocks), each written to its
/// precomputed place when full, so memory does not grow with the input.
public enum VerityHashTree {
    public static let blockSize = 4096
    static let digestSize = 32
    /// 128 digests per hash block: 2^7.
    static let digestsPerBlockBits = 7
    /// Data blocks read and hashed at a time (4 MiB).
    static let chunkBlocks = 1024
    /// Threads hashing the data blocks of a chunk: the blocks are independent, and hashing is
    /// nearly all the work (the levels above hold 1/128 of the blocks).
    static let workers = max(1, min(4, sysconf(Int32(_SC_NPROCESSORS_ONLN))))

    /// The tree's levels, bottom (level 0, over the data blocks) first: where each
    /// starts in the hash area and how many blocks it has, in hash blocks.
    /// No level at all for a single data block.
    public static func levels(dataBlocks: UInt64) throws -> [(start: UInt64, count: UInt64)] {
        guard dataBlocks > 0 else { throw RootfsError("dm-verity needs at least one data block") }
        var counts: [UInt64] = []
        var blocks = dataBlocks
        // Like the kernel: a level is added while more than one block remains to be covered.
        while blocks > 1 {
            blocks = (blocks - 1) >> UInt64(digestsPerBlockBits) + 1
            counts.append(blocks)
        }
        var start: UInt64 = 0
        var starts = [UInt64](repeating: 0, count: counts.count)
        for i in counts.indices.reversed() {
            starts[i] = start
            start = try Checked.add(start, counts[i], "the dm-verity tree size")
        }
        return counts.indices.map { (starts[$0], counts[$0]) }
    }

    /// The tree's size in bytes for `dataBlocks` blocks.
    public static func hashSize(dataBlocks: UInt64) throws -> Int64 {
        let total = try levels(dataBlocks: dataBlocks).reduce(UInt64(0)) { try Checked.add($0, $1.count, "the dm-verity tree size") }
        return try Checked.convert(try Checked.multiply(total, UInt64(blockSize), "the dm-verity tree size"), to: Int64.self, "the dm-verity tree size")
    }

    /// A salt that two builds with the same SOURCE_DATE_EPOCH and the same data identity
    /// share (veritysetup's own default is 32 random bytes): sha256 of both, 32 bytes.
    public static func derivedSalt(epoch: Int, identity: [UInt8]) -> [UInt8] {
        var hasher = SHA256()
        hasher.update(Array("rootfs-verity-salt:\(epoch):".utf8))
        hasher.update(identity)
        return hasher.finalize()
    }

    /// The identity `derivedSalt` takes for a data range when the caller has none: its length
    /// and the digest of its first 64 KiB (which hold the file system's superblock, its UUID).
    public static func dataIdentity(path: String, offset: Int64 = 0, length: Int64? = nil) throws -> [UInt8] {
        let input = try OwnedFileDescriptor(path: path, flags: O_RDONLY)
        let size = try length ?? Checked.subtract(input.size(), offset, "the data offset of \(path)")
        let head = try input.read(count: Int(min(size, 65536)), at: offset)
        var identity = Array("\(size):".utf8)
        identity += Array(SHA256.hexDigest(of: head).utf8)
        return identity
    }

    /// A `--salt` value: hex digits (even count, at most 256 bytes, veritysetup's limit), or "-" for none.
    public static func parseSalt(_ text: String) throws -> [UInt8] {
        if text == "-" { return [] }
        let digits = Array(text.utf8)
        func value(_ c: UInt8) -> UInt8? {
            switch c {
            case UInt8(ascii: "0")...UInt8(ascii: "9"): return c - UInt8(ascii: "0")
            case UInt8(ascii: "a")...UInt8(ascii: "f"): return c - UInt8(ascii: "a") + 10
            case UInt8(ascii: "A")...UInt8(ascii: "F"): return c - UInt8(ascii: "A") + 10
            default: return nil
            }
        }
        guard digits.count % 2 == 0, digits.count <= 512 else {
            throw RootfsError("the salt '\(text)' is not an even number of hex digits (at most 512)", hint: "give hex bytes, e.g. --salt 0011aabb, or - for no salt")
        }
        var out: [UInt8] = []
        for i in stride(from: 0, to: digits.count, by: 2) {
            guard let hi = value(digits[i]), let lo = value(digits[i + 1]) else {
                throw RootfsError("the salt '\(text)' holds a character that is not a hex digit", hint: "give hex bytes, e.g. --salt 0011aabb, or - for no salt")
            }
            out.append(hi << 4 | lo)
        }
        return out
    }

    /// Writes the tree of `data` (its bytes `offset ..< offset + length`: a partition inside a disk
    /// image; the whole file by default) to a new file `hashFile`, under a temporary name renamed
    /// when complete.
    public static func write(data: String, offset: Int64 = 0, length: Int64? = nil, to hashFile: String,
                             salt: [UInt8]) throws -> VerityParameters {
        let input = try OwnedFileDescriptor(path: data, flags: O_RDONLY)
        let temporary = FS.siblingTemporaryPath(for: hashFile)
        var output = try OwnedFileDescriptor(path: temporary, flags: O_WRONLY | O_CREAT | O_EXCL, mode: 0o644, name: hashFile)
        var renamed = false
        defer { if !renamed { unlink(temporary) } }
        let parameters = try write(data: input, offset: offset, length: length, hash: output, hashOffset: 0, salt: salt)
        try output.close()
        try FS.rename(temporary, to: hashFile)
        renamed = true
        return parameters
    }

    /// Writes the tree of `data`'s bytes `offset ..< offset + length` into `hash` at `hashOffset`
    /// (a hash partition of the same disk, or after the data: veritysetup's --hash-offset).
    public static func write(data input: borrowing OwnedFileDescriptor, offset: Int64 = 0, length: Int64? = nil,
                             hash output: borrowing OwnedFileDescriptor, hashOffset: Int64,
                             salt: [UInt8]) throws -> VerityParameters {
        guard offset >= 0, hashOffset >= 0 else { throw RootfsError("dm-verity: a negative offset") }
        guard salt.count <= 256 else { throw RootfsError("the dm-verity salt is \(salt.count) bytes; veritysetup takes at most 256") }
        let fileSize = try input.size()
        let available = try Checked.subtract(fileSize, offset, "the data offset \(offset) in \(input.name) (\(fileSize) bytes)")
        let length = length ?? available
        guard length >= 0, length <= available else {
            throw RootfsError("dm-verity: \(input.name) has \(available) bytes after offset \(offset), not \(length)")
        }
        guard length % Int64(blockSize) == 0 else {
            // veritysetup silently leaves a partial last block out of the tree: that tail
            // would be readable and unprotected. Kata's data partitions are whole MiBs.
            throw RootfsError("dm-verity: the data (\(length) bytes) is not a whole number of \(blockSize)-byte blocks",
                              hint: "pad the data to a multiple of \(blockSize) bytes (truncate -s) or protect a partition, whose size is whole MiBs")
        }
        let dataBlocks = UInt64(length) / UInt64(blockSize)
        let layout = try levels(dataBlocks: dataBlocks)
        let treeSize = try hashSize(dataBlocks: dataBlocks)
        let treeEnd = try Checked.add(hashOffset, treeSize, "the end of the dm-verity tree in \(output.name)")
        var a = stat(), b = stat()
        if fstat(input.raw, &a) == 0, fstat(output.raw, &b) == 0, a.st_dev == b.st_dev, a.st_ino == b.st_ino,
           hashOffset < offset + length, offset < treeEnd {
            throw RootfsError("dm-verity: the tree (bytes \(hashOffset)..<\(treeEnd)) would overwrite the data it protects (\(offset)..<\(offset + length))",
                              hint: "put the tree after the data or in another partition or file")
        }

        var salted = SHA256()
        salted.update(salt)
        var tree = try TreeBuilder(layout: layout, salted: salted, hashOffset: hashOffset)
        defer { tree.deallocate() }

        var position = offset
        let end = offset + length
        var root: [UInt8] = []
        let digests = UnsafeMutableRawBufferPointer.allocate(byteCount: chunkBlocks * digestSize, alignment: 16)
        defer { digests.deallocate() }
        while position < end {
            if Task.isCancelled { throw CancellationError() }
            let want = Int(min(Int64(chunkBlocks * blockSize), end - position))
            let chunk = try input.read(count: want, at: position)
            guard chunk.count == want else { throw RootfsError("dm-verity: \(input.name) ended early (it changed while being read?)") }
            chunk.withUnsafeBytes { Self.hashBlocks($0, into: digests, salt: salt) }
            for b in 0..<(want / blockSize) {
                let digest = Array(digests[(b * digestSize)..<((b + 1) * digestSize)])
                if layout.isEmpty { root = digest } else { try tree.add(digest, level: 0, output: output) }
            }
            position += Int64(want)
        }
        if !layout.isEmpty { root = try tree.finish(output: output) }
        return VerityParameters(rootHash: SHA256.hex(root), salt: salt.isEmpty ? "-" : SHA256.hex(salt),
                                dataBlocks: dataBlocks, dataBlockSize: blockSize, hashBlockSize: blockSize,
                                hashAlgorithm: "sha256", hashOffset: hashOffset, hashSize: treeSize)
    }

    /// Which SHA-256 hashes the data blocks: libnettle's when the process has it, else the Swift one.
    enum Backend: Sendable { case nettle(NettleSHA256), swift }
    static let backend: Backend = NettleSHA256.shared.map { .nettle($0) } ?? .swift

    /// sha256(salt ‖ block) of every 4 KiB block of `data`, into `digests` in order.
    static func hashBlocks(_ data: UnsafeRawBufferPointer, into digests: UnsafeMutableRawBufferPointer, salt: [UInt8],
                           backend: Backend = backend) {
        let count = data.count / blockSize
        let parts = min(workers, max(1, count / 64))
        let raw = (data: UInt(bitPattern: data.baseAddress), digests: UInt(bitPattern: digests.baseAddress))
        DispatchQueue.concurrentPerform(iterations: parts) { part in
            // Each worker takes a contiguous run of blocks and writes only its own digest slots.
            let data = UnsafeRawPointer(bitPattern: raw.data)!, digests = UnsafeMutableRawPointer(bitPattern: raw.digests)!
            let blocks = (count * part / parts)..<(count * (part + 1) / parts)
            switch backend {
            case .nettle(let nettle):
                withUnsafeTemporaryAllocation(byteCount: NettleSHA256.contextSize, alignment: 16) { context in
                    salt.withUnsafeBytes { prefix in
                        for b in blocks {
                            nettle.hash(prefix: prefix, UnsafeRawBufferPointer(start: data + b * blockSize, count: blockSize),
                                        into: digests + b * digestSize, context: context.baseAddress!)
                        }
                    }
                }
            case .swift:
                for b in blocks {
                    var h = SHA256()
                    h.update(salt)
                    h.update(UnsafeRawBufferPointer(start: data + b * blockSize, count: blockSize))
                    let digest = h.finalize()
                    digest.withUnsafeBytes { (digests + b * digestSize).copyMemory(from: $0.baseAddress!, byteCount: digestSize) }
                }
            }
        }
    }

    /// Writes Kata's `root_hash_<variant>.txt` (one line, as image_builder.sh writes it).
    public static func writeKataParameters(_ parameters: VerityParameters, to path: String) throws {
        let temporary = FS.siblingTemporaryPath(for: path)
        var output = try OwnedFileDescriptor(path: temporary, flags: O_WRONLY | O_CREAT | O_EXCL, mode: 0o644, name: path)
        var renamed = false
        defer { if !renamed { unlink(temporary) } }
        try output.writeAll(Array((parameters.kataParameters + "\n").utf8))
        try output.close()
        try FS.rename(temporary, to: path)
        renamed = true
    }

    /// One partly filled hash block per level; a full block is written to its place and
    /// its digest goes to the level above.
    struct TreeBuilder {
        let layout: [(start: UInt64, count: UInt64)]
        let salted: SHA256
        let hashOffset: Int64
        let buffers: UnsafeMutableRawBufferPointer
        var filled: [Int]
        var written: [UInt64]
        var root: [UInt8] = []

        init(layout: [(start: UInt64, count: UInt64)], salted: SHA256, hashOffset: Int64) throws {
            self.layout = layout
            self.salted = salted
            self.hashOffset = hashOffset
            buffers = .allocate(byteCount: max(1, layout.count) * VerityHashTree.blockSize, alignment: 4096)
            buffers.initializeMemory(as: UInt8.self, repeating: 0)
            filled = [Int](repeating: 0, count: layout.count)
            written = [UInt64](repeating: 0, count: layout.count)
        }

        func deallocate() { buffers.deallocate() }

        mutating func add(_ digest: [UInt8], level: Int, output: borrowing OwnedFileDescriptor) throws {
            let base = level * VerityHashTree.blockSize + filled[level] * VerityHashTree.digestSize
            digest.withUnsafeBytes { buffers.baseAddress!.advanced(by: base).copyMemory(from: $0.baseAddress!, byteCount: $0.count) }
            filled[level] += 1
            if filled[level] == 1 << VerityHashTree.digestsPerBlockBits {
                try flush(level: level, output: output)
            }
        }

        /// Writes level `level`'s block (its unused slots are zeros) and hashes it upwards.
        mutating func flush(level: Int, output: borrowing OwnedFileDescriptor) throws {
            let block = UnsafeMutableRawBufferPointer(rebasing: buffers[(level * VerityHashTree.blockSize)..<((level + 1) * VerityHashTree.blockSize)])
            let index = layout[level].start + written[level]
            guard written[level] < layout[level].count else {
                throw RootfsError("dm-verity: internal error, level \(level) has more blocks than planned")
            }
            let at = try Checked.add(hashOffset, Int64(index) * Int64(VerityHashTree.blockSize), "the dm-verity tree offset")
            try output.writeAll(UnsafeRawBufferPointer(block), at: at)
            var h = salted
            h.update(UnsafeRawBufferPointer(block))
            let digest = h.finalize()
            block.initializeMemory(as: UInt8.self, repeating: 0)
            filled[level] = 0
            written[level] += 1
            if level + 1 < layout.count { try add(digest, level: level + 1, output: output) } else { root = digest }
        }

        /// Flushes the partly filled blocks, bottom first; returns the root hash.
        mutating func finish(output: borrowing OwnedFileDescriptor) throws -> [UInt8] {
            for level in layout.indices where filled[level] > 0 { try flush(level: level, output: output) }
            for level in layout.indices where written[level] != layout[level].count {
                throw RootfsError("dm-verity: internal error, level \(level) has \(written[level]) blocks, not \(layout[level].count)")
            }
            return root
        }
    }
}
