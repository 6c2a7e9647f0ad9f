import RootfsSupport
import CArchive
import Foundation
import Synchronization

/// gzip compression of an archive stream on several cores, with zlib directly.
///
/// The stream is cut into fixed-size blocks, each deflated on its own (a fresh
/// deflate state: no dictionary shared across blocks), every block but the last
/// ending with a sync flush so that it stops on a byte boundary without the final
/// bit. The raw deflate pieces, laid end to end, are one valid deflate stream; the
/// CRC-32s are combined in order and ISIZE is the length mod 2^32. So the output
/// is one ordinary gzip member (gzip -t, the kernel's inflate and libarchive read
/// it), and since the cuts depend only on the block size, the bytes are the same
/// whatever the number of workers.
///
/// libarchive's gzip filter (3.6.2) uses one core: with it a gzip initrd was only
/// about 4x faster than Kata's `find | cpio | gzip -9`.
///
/// Memory: one batch of `workers` blocks and their outputs at a time
/// (2 x workers x 1 MiB, workers capped at `maxWorkers`).
public struct ParallelGzip: Sendable {
    /// The cut. Fixed, never taken from the machine: it decides the bytes. 1 MiB
    /// keeps the loss against one whole-stream deflate (a 32 KiB window relearned
    /// per block) well under 1%.
    public static let blockSize = 1 << 20
    /// zlib level 7, not gzip's 6: independent 1 MiB blocks at 6 came out 0.05-0.1% larger than
    /// `gzip -6` of the whole stream (each block relearns its window); 7 is 0.3% smaller on a
    /// Python tree for about a third more CPU time, spread over the cores.
    public static let defaultLevel = 7
    /// More workers buy little on a tree-sized stream and each holds 2 MiB.
    public static let maxWorkers = 8

    public var level: Int32
    public var workers: Int

    /// `workers`: nil for the machine's cores (capped at `maxWorkers`).
    public init(level: Int = ParallelGzip.defaultLevel, workers: Int? = nil) {
        self.level = Int32(max(1, min(9, level)))
        let cores = ProcessInfo.processInfo.activeProcessorCount
        self.workers = max(1, min(Self.maxWorkers, workers ?? cores))
    }

    /// The gzip member header: no name, no time stamp (the same input gives the same bytes), OS Unix.
    static var header: [UInt8] { [0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 3] }

    /// One block as raw deflate: ended by a sync flush (byte-aligned, not final), or, for
    /// the last block of the stream, by the final block.
    static func deflateBlock(_ input: UnsafeRawBufferPointer, level: Int32, final: Bool) -> Result<[UInt8], RootfsError> {
        var stream = z_stream()
        // windowBits -15: raw deflate, no zlib header or trailer (the gzip framing is ours).
        let initStatus = deflateInit2_(&stream, level, Z_DEFLATED, -15, 8, Z_DEFAULT_STRATEGY,
                                       zlibVersion(), Int32(MemoryLayout<z_stream>.size))
        guard initStatus == Z_OK else { return .failure(RootfsError("zlib: cannot start deflate (status \(initStatus))")) }
        defer { deflateEnd(&stream) }
        // deflateBound covers the data; a sync flush adds at most an empty stored block (5 bytes) and a partial byte.
        let bound = Int(deflateBound(&stream, uLong(input.count))) + 64
        var output = [UInt8](repeating: 0, count: bound)
        let status: Int32 = output.withUnsafeMutableBytes { out in
            stream.next_in = UnsafeMutablePointer(mutating: input.baseAddress?.assumingMemoryBound(to: Bytef.self))
            stream.avail_in = uInt(input.count)
            stream.next_out = out.baseAddress!.assumingMemoryBound(to: Bytef.self)
            stream.avail_out = uInt(out.count)
            return deflate(&stream, final ? Z_FINISH : Z_SYNC_FLUSH)
        }
        let complete = final ? status == Z_STREAM_END : (status == Z_OK && stream.avail_in == 0 && stream.avail_out > 0)
        guard complete else { return .failure(RootfsError("zlib: deflate of a \(input.count)-byte block failed (status \(status))")) }
        output.removeLast(Int(stream.avail_out))
        return .success(output)
    }

    /// The whole gzip member for `data`, in memory (tests, small inputs).
    public func compress(_ data: [UInt8]) throws -> [UInt8] {
        var out: [UInt8] = []
        let sink = ParallelGzipSink(gzip: self) { piece in out += piece; return nil }
        data.withUnsafeBytes { _ = sink.compress($0, end: false) }
        _ = sink.compress(UnsafeRawBufferPointer(start: nil, count: 0), end: true)
        if let error = sink.error { throw error }
        return out
    }
}

/// The streaming side of `ParallelGzip`: fed by libarchive's write callback, it fills
/// blocks, deflates a full batch of them at once on the workers, and hands the pieces
/// to `emit` in stream order.
final class ParallelGzipSink {
    let gzip: ParallelGzip
    /// Writes a piece of the output; returns an error to stop.
    private let emit: ([UInt8]) -> RootfsError?
    private var blocks: [UnsafeMutableRawBufferPointer]
    private var filled: [Int]
    /// The block being filled.
    private var current = 0
    private var crc: uLong = crc32(0, nil, 0)
    private var length: UInt64 = 0
    private var started = false
    private(set) var written: Int64 = 0
    private(set) var error: RootfsError?

    init(gzip: ParallelGzip, emit: @escaping ([UInt8]) -> RootfsError?) {
        self.gzip = gzip
        self.emit = emit
        blocks = (0..<gzip.workers).map { _ in
            UnsafeMutableRawBufferPointer.allocate(byteCount: ParallelGzip.blockSize, alignment: 16)
        }
        filled = Array(repeating: 0, count: gzip.workers)
    }

    /// Writes to a file descriptor.
    convenience init(fd: Int32, gzip: ParallelGzip) {
        self.init(gzip: gzip) { piece in
            do {
                try piece.withUnsafeBytes { try FS.writeAll($0, to: fd, name: "the output") }
                return nil
            } catch let failure as RootfsError {
                return failure
            } catch {
                return RootfsError("cannot write the output: \(error)")
            }
        }
    }

    deinit {
        for block in blocks { block.deallocate() }
    }

    /// Takes `data` (or, with `end`, finishes the member). False after an error (see `error`).
    func compress(_ data: UnsafeRawBufferPointer, end: Bool) -> Bool {
        if error != nil { return false }
        if !started {
            started = true
            if !put(ParallelGzip.header) { return false }
        }
        var offset = 0
        while offset < data.count {
            if filled[current] == ParallelGzip.blockSize {
                // Every full block is followed by another (maybe empty) one, which is the
                // final one: so a full block is never final, whatever the batch size.
                if current + 1 == blocks.count {
                    if !flush(final: false) { return false }
                } else {
                    current += 1
                }
            }
            let n = min(data.count - offset, ParallelGzip.blockSize - filled[current])
            let destination = blocks[current].baseAddress! + filled[current]
            destination.copyMemory(from: data.baseAddress! + offset, byteCount: n)
            filled[current] += n
            offset += n
        }
        if end {
            if !flush(final: true) { return false }
            var trailer: [UInt8] = []
            let crcValue = UInt32(truncatingIfNeeded: crc)
            let size = UInt32(truncatingIfNeeded: length)
            for shift in stride(from: 0, to: 32, by: 8) { trailer.append(UInt8(truncatingIfNeeded: crcValue >> UInt32(shift))) }
            for shift in stride(from: 0, to: 32, by: 8) { trailer.append(UInt8(truncatingIfNeeded: size >> UInt32(shift))) }
            return put(trailer)
        }
        return true
    }

    /// Deflates blocks 0...current on the workers, writes them in order, empties the batch.
    private func flush(final: Bool) -> Bool {
        let count = current + 1
        let level = gzip.level
        // Read-only while the workers run (each reads its own block); the batch is not refilled before they all return.
        nonisolated(unsafe) let inputs = (0..<count).map { UnsafeRawBufferPointer(rebasing: UnsafeRawBufferPointer(blocks[$0])[0..<filled[$0]]) }
        let results = Results(count: count)
        DispatchQueue.concurrentPerform(iterations: count) { index in
            let isLast = final && index == count - 1
            let piece = ParallelGzip.deflateBlock(inputs[index], level: level, final: isLast)
            let crc = inputs[index].withMemoryRebound(to: Bytef.self) { crc32(0, $0.baseAddress, uInt($0.count)) }
            results.set(index, piece.map { ($0, crc) })
        }
        for index in 0..<count {
            switch results.get(index) {
            case .success(let (piece, blockCRC)):
                let size = filled[index]
                crc = crc32_combine(crc, blockCRC, off_t(size))
                length &+= UInt64(size)
                if !put(piece) { return false }
            case .failure(let failure):
                error = failure
                return false
            case nil:
                error = RootfsError("gzip: a block was not compressed")
                return false
            }
        }
        for index in 0..<count { filled[index] = 0 }
        current = 0
        return true
    }

    private func put(_ bytes: [UInt8]) -> Bool {
        if let failure = emit(bytes) {
            error = failure
            return false
        }
        written += Int64(bytes.count)
        return true
    }

    /// The workers' results, one slot each (each worker writes only its own index).
    private final class Results: @unchecked Sendable {
        private let slots: Mutex<[Result<([UInt8], uLong), RootfsError>?]>
        init(count: Int) { slots = Mutex(Array(repeating: nil, count: count)) }
        func set(_ index: Int, _ value: Result<([UInt8], uLong), RootfsError>) { slots.withLock { $0[index] = value } }
        func get(_ index: Int) -> Result<([UInt8], uLong), RootfsError>? { slots.withLock { $0[index] } }
    }
}
