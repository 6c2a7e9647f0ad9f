import RootfsSupport
import CArchive
import CDeflate
import Foundation

/// gzip compression of an archive stream on several cores, with libdeflate.
///
/// The stream is cut into fixed-size blocks, each deflated on its own (no dictionary
/// shared across blocks). libdeflate ends every buffer with a final block, so every
/// block but the last is made continuable (DeflateBlockWalker: the final bit cleared and
/// a sync flush's empty stored block appended, ending it on a byte boundary). The raw
/// deflate pieces, laid end to end, are one valid deflate stream; the CRC-32s are
/// combined in order and ISIZE is the length mod 2^32. So the output is one ordinary
/// gzip member (gzip -t, the kernel's inflate and libarchive read it; the kernel's
/// initramfs reader needs the cpio inside one member, not cut across several), and
/// since the cuts depend only on the block size, the bytes are the same whatever the
/// number of workers.
///
/// libarchive's gzip filter (3.6.2) uses one core: with it a gzip initrd was only about
/// 4x faster than Kata's `find | cpio | gzip -9`; zlib on all cores, about 3x on 2 cores
/// (zlib level 7 was needed to stay under gzip -6's size); libdeflate does the same
/// ratio 3-4x faster per core.
///
/// Memory: at most `2 x workers` blocks in flight (each its 1 MiB input and its output),
/// the block being filled, and one libdeflate compressor per worker (workers capped at
/// `maxWorkers`).
public struct ParallelGzip: Sendable {
    /// The cut. Fixed, never taken from the machine: it decides the bytes. 1 MiB
    /// keeps the loss against one whole-stream deflate (a 32 KiB window relearned
    /// per block) well under 1%.
    public static let blockSize = 1 << 20
    /// libdeflate level 6: independent 1 MiB blocks came out 1.5% smaller than `gzip -6` of
    /// the whole stream on the Debian tree (level 5: 1% smaller, level 4: 1.3% larger), at
    /// about a third of zlib -6's CPU time.
    public static let defaultLevel = 6
    /// More workers buy little on a tree-sized stream and each holds up to 4 MiB.
    public static let maxWorkers = 8

    public var level: Int32
    public var workers: Int

    /// `workers`: nil for the machine's cores (capped at `maxWorkers`). `level`: libdeflate's, 1...12.
    public init(level: Int = ParallelGzip.defaultLevel, workers: Int? = nil) {
        self.level = Int32(max(1, min(12, level)))
        let cores = ProcessInfo.processInfo.activeProcessorCount
        self.workers = max(1, min(Self.maxWorkers, workers ?? cores))
    }

    /// The gzip member header: no name, no time stamp (the same input gives the same bytes), OS Unix.
    static var header: [UInt8] { [0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 3] }

    /// One block as raw deflate with its CRC-32: made continuable (byte-aligned, not final)
    /// unless it is the last block of the stream.
    static func deflateBlock(_ input: UnsafeRawBufferPointer, compressor: Compressor, final: Bool) -> Result<([UInt8], UInt32), RootfsError> {
        let bound = libdeflate_deflate_compress_bound(compressor.pointer, input.count)
        var output = [UInt8](repeating: 0, count: bound)
        let size = output.withUnsafeMutableBytes { out in
            libdeflate_deflate_compress(compressor.pointer, input.baseAddress, input.count, out.baseAddress, out.count)
        }
        // With the bound's room libdeflate cannot fail; 0 would mean it did.
        guard size > 0 else { return .failure(RootfsError("libdeflate: the compression of a \(input.count)-byte block failed")) }
        output.removeLast(output.count - size)
        if !final {
            do { try DeflateBlockWalker.makeContinuable(&output) } catch let failure as RootfsError {
                return .failure(RootfsError("gzip: libdeflate's output for a \(input.count)-byte block is not one deflate stream: \(failure.message)"))
            } catch {
                return .failure(RootfsError("gzip: \(error)"))
            }
        }
        return .success((output, libdeflate_crc32(0, input.baseAddress, input.count)))
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

    /// A libdeflate compressor: one per worker, used by one block at a time.
    final class Compressor: @unchecked Sendable {
        let pointer: OpaquePointer
        init(level: Int32) throws {
            guard let made = libdeflate_alloc_compressor(level) else {
                throw RootfsError("libdeflate: cannot allocate a level \(level) compressor (out of memory)")
            }
            pointer = made
        }
        deinit { libdeflate_free_compressor(pointer) }
    }
}

/// The streaming side of `ParallelGzip`: fed by libarchive's write callback, it fills
/// blocks and hands each full one to a worker at once (block n to worker n mod workers),
/// so the archive keeps being read while earlier blocks compress; the pieces go to `emit`
/// in stream order, on the caller's thread. When `2 x workers` blocks are in flight, the
/// caller waits for the oldest.
final class ParallelGzipSink {
    let gzip: ParallelGzip
    /// Writes a piece of the output; returns an error to stop.
    private let emit: ([UInt8]) -> RootfsError?
    private let queues: [DispatchQueue]
    private var compressors: [ParallelGzip.Compressor] = []
    /// Buffers not in flight.
    private var spare: [UnsafeMutableRawBufferPointer] = []
    private var allocated: [UnsafeMutableRawBufferPointer] = []
    /// The block being filled, and how full it is.
    private var current: UnsafeMutableRawBufferPointer?
    private var filled = 0
    private var inFlight: [Job] = []
    private var submitted = 0
    private var crc: uLong = crc32(0, nil, 0)
    private var length: UInt64 = 0
    private var started = false
    private(set) var written: Int64 = 0
    private(set) var error: RootfsError?

    private var maxInFlight: Int { 2 * gzip.workers }

    init(gzip: ParallelGzip, emit: @escaping ([UInt8]) -> RootfsError?) {
        self.gzip = gzip
        self.emit = emit
        queues = (0..<gzip.workers).map { DispatchQueue(label: "rootfs.gzip.\($0)") }
        do {
            compressors = try (0..<gzip.workers).map { _ in try ParallelGzip.Compressor(level: gzip.level) }
        } catch let failure as RootfsError {
            error = failure
        } catch {
            self.error = RootfsError("libdeflate: \(error)")
        }
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
        // A job still running reads its buffer: wait for them all before freeing.
        for job in inFlight { job.done.wait() }
        for buffer in allocated { buffer.deallocate() }
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
            // A full block goes out only once more data comes: the last block of the
            // stream, full or not, is the final one, whatever the batching.
            if current == nil || filled == ParallelGzip.blockSize {
                if current != nil, !submit(final: false) { return false }
                guard let buffer = takeBuffer() else { return false }
                current = buffer
                filled = 0
            }
            let block = current!
            let n = min(data.count - offset, ParallelGzip.blockSize - filled)
            (block.baseAddress! + filled).copyMemory(from: data.baseAddress! + offset, byteCount: n)
            filled += n
            offset += n
        }
        if end {
            if current == nil {
                guard let buffer = takeBuffer() else { return false }
                current = buffer
                filled = 0
            }
            if !submit(final: true) { return false }
            while !inFlight.isEmpty { if !emitOldest() { return false } }
            var trailer: [UInt8] = []
            let crcValue = UInt32(truncatingIfNeeded: crc)
            let size = UInt32(truncatingIfNeeded: length)
            for shift in stride(from: 0, to: 32, by: 8) { trailer.append(UInt8(truncatingIfNeeded: crcValue >> UInt32(shift))) }
            for shift in stride(from: 0, to: 32, by: 8) { trailer.append(UInt8(truncatingIfNeeded: size >> UInt32(shift))) }
            return put(trailer)
        }
        return true
    }

    /// A free buffer: a spare one, a new one while fewer than the limit exist, or the
    /// oldest job's once it is written out.
    private func takeBuffer() -> UnsafeMutableRawBufferPointer? {
        while spare.isEmpty {
            if allocated.count < maxInFlight + 1 {
                let made = UnsafeMutableRawBufferPointer.allocate(byteCount: ParallelGzip.blockSize, alignment: 16)
                allocated.append(made)
                spare.append(made)
            } else if !emitOldest() {
                return nil
            }
        }
        return spare.removeLast()
    }

    /// Hands the current block to its worker, then writes out whatever is already done in order.
    private func submit(final: Bool) -> Bool {
        while inFlight.count >= maxInFlight { if !emitOldest() { return false } }
        let block = current!
        let job = Job(buffer: block, size: filled)
        current = nil
        filled = 0
        let index = submitted % gzip.workers
        submitted += 1
        let compressor = compressors[index]
        nonisolated(unsafe) let input = UnsafeRawBufferPointer(rebasing: UnsafeRawBufferPointer(block)[0..<job.size])
        inFlight.append(job)
        queues[index].async {
            // The buffer is read only here until `done` is signalled; the caller refills it only after.
            job.result = ParallelGzip.deflateBlock(input, compressor: compressor, final: final)
            job.done.signal()
        }
        while let oldest = inFlight.first, oldest.done.wait(timeout: .now()) == .success {
            oldest.done.signal()  // wait() took the signal: give it back for emitOldest
            if !emitOldest() { return false }
        }
        return true
    }

    /// Waits for the oldest job, writes its piece and recycles its buffer.
    private func emitOldest() -> Bool {
        let job = inFlight.removeFirst()
        job.done.wait()
        spare.append(job.buffer)
        switch job.result {
        case .success(let (piece, blockCRC)):
            crc = crc32_combine(crc, uLong(blockCRC), off_t(job.size))
            length &+= UInt64(job.size)
            return put(piece)
        case .failure(let failure):
            error = failure
            return false
        case nil:
            error = RootfsError("gzip: a block was not compressed")
            return false
        }
    }

    private func put(_ bytes: [UInt8]) -> Bool {
        if let failure = emit(bytes) {
            error = failure
            return false
        }
        written += Int64(bytes.count)
        return true
    }

    /// One block in flight: written by its worker before `done` is signalled, read by the
    /// caller only after waiting for it.
    private final class Job: @unchecked Sendable {
        let buffer: UnsafeMutableRawBufferPointer
        let size: Int
        let done = DispatchSemaphore(value: 0)
        var result: Result<([UInt8], UInt32), RootfsError>?
        init(buffer: UnsafeMutableRawBufferPointer, size: Int) {
            self.buffer = buffer
            self.size = size
        }
    }
}
