import RootfsSupport
import CArchive
import Foundation

/// Compression of an archive output.
public enum Compression: String, Sendable, CaseIterable, Codable {
    case zstd, gzip, none
}

/// A libarchive write handle: freed in deinit, every return code checked.
public final class ArchiveWriteHandle {
    public enum Format { case cpioNewc, paxRestricted }

    let pointer: OpaquePointer
    private var closed = false
    /// The sink as libarchive's client pointer (kept alive as long as the handle).
    private var box: SinkBox?
    /// zstd and gzip are done here rather than by libarchive's filters (see ZstdSink, ParallelGzipSink).
    private var sink: (any CompressionSink)? { box?.sink }
    private let compression: Compression
    private let level: Int?
    private let gzipWorkers: Int?

    /// `gzipWorkers`: nil for the machine's cores; the bytes do not depend on it (see ParallelGzip).
    init(format: Format, compression: Compression, level: Int? = nil, threads: Int = 0, gzipWorkers: Int? = nil) throws {
        self.compression = compression
        self.level = level
        self.gzipWorkers = gzipWorkers
        guard let a = archive_write_new() else { throw RootfsError("libarchive: out of memory") }
        pointer = a
        switch format {
        case .cpioNewc: try check(archive_write_set_format_cpio_newc(a), "set the cpio format")
        case .paxRestricted: try check(archive_write_set_format_pax_restricted(a), "set the tar format")
        }
        switch compression {
        case .zstd, .gzip:
            // The archive goes uncompressed to ZstdSink or ParallelGzipSink, which compress it.
            try check(archive_write_add_filter_none(a), "set no compression")
        case .none:
            try check(archive_write_add_filter_none(a), "set no compression")
        }
        // No padding to 10 KiB blocks after the last entry.
        try check(archive_write_set_bytes_in_last_block(a, 1), "set the last block size")
    }

    deinit {
        if !closed { archive_write_close(pointer) }
        archive_write_free(pointer)
    }

    func open(fd: Int32) throws {
        let made: (any CompressionSink)?
        switch compression {
        case .zstd: made = try ZstdSink(fd: fd, level: level ?? 3)
        case .gzip: made = ParallelGzipSink(fd: fd, gzip: ParallelGzip(level: level ?? ParallelGzip.defaultLevel, workers: gzipWorkers))
        case .none: made = nil
        }
        if let made {
            let box = SinkBox(made)
            self.box = box
            let write: @convention(c) (OpaquePointer?, UnsafeMutableRawPointer?, UnsafeRawPointer?, Int) -> Int = { _, client, buffer, length in
                let box = Unmanaged<SinkBox>.fromOpaque(client!).takeUnretainedValue()
                return box.sink.compress(UnsafeRawBufferPointer(start: buffer, count: length), end: false) ? length : -1
            }
            let close: @convention(c) (OpaquePointer?, UnsafeMutableRawPointer?) -> Int32 = { _, client in
                let box = Unmanaged<SinkBox>.fromOpaque(client!).takeUnretainedValue()
                return box.sink.compress(UnsafeRawBufferPointer(start: nil, count: 0), end: true) ? ARCHIVE_OK : ARCHIVE_FATAL
            }
            let status = archive_write_open(pointer, Unmanaged.passUnretained(box).toOpaque(), nil, write, close)
            if status < ARCHIVE_WARN { throw made.error ?? error("open the output") }
            return
        }
        try check(archive_write_open_fd(pointer, fd), "open the output")
    }

    func writeHeader(_ entry: ArchiveEntryHandle) throws {
        try check(archive_write_header(pointer, entry.pointer), "write the header of \(entry.pathDescription)")
    }

    func writeData(_ buffer: UnsafeRawBufferPointer) throws {
        var offset = 0
        while offset < buffer.count {
            let n = archive_write_data(pointer, buffer.baseAddress! + offset, buffer.count - offset)
            if n < 0 { throw sink?.error ?? error("write data") }
            if n == 0 { throw RootfsError("libarchive wrote nothing while writing data") }
            offset += n
        }
    }

    func finishEntry() throws {
        try check(archive_write_finish_entry(pointer), "finish an entry")
    }

    /// Bytes written to the output so far (after compression).
    var bytesWritten: Int64 { sink?.written ?? archive_filter_bytes(pointer, -1) }

    func close() throws {
        closed = true
        let status = archive_write_close(pointer)
        if status < ARCHIVE_WARN, let failure = sink?.error { throw failure }
        try check(status, "finish the archive")
    }

    private func check(_ status: Int32, _ what: String) throws {
        if status < ARCHIVE_WARN { throw error(what) }
    }

    private func error(_ what: String) -> RootfsError {
        let text = archive_error_string(pointer).map { String(cString: $0) } ?? "unknown error"
        let code = archive_errno(pointer)
        // libarchive says only "Write error": the system's reason (a full disk...) is in errno.
        let reason = code > 0 && !text.contains(FS.errnoText(code)) ? " (\(FS.errnoText(code)))" : ""
        return RootfsError("cannot \(what): \(text)\(reason)",
                           hint: code == ENOSPC ? "the disk holding the output is full: free space there or write elsewhere" : nil)
    }
}

/// A compressor between libarchive's uncompressed stream and the output file.
protocol CompressionSink: AnyObject {
    /// Takes `data` (or, with `end`, finishes the stream); false after a failure, in `error`.
    func compress(_ data: UnsafeRawBufferPointer, end: Bool) -> Bool
    var written: Int64 { get }
    var error: RootfsError? { get }
}

/// An existential sink behind one class pointer, for libarchive's C callbacks.
final class SinkBox {
    let sink: any CompressionSink
    init(_ sink: any CompressionSink) { self.sink = sink }
}

extension ZstdSink: CompressionSink {}
extension ParallelGzipSink: CompressionSink {}

/// zstd compression of the archive stream, done with libzstd directly: two workers
/// with 1 MiB jobs. libarchive's own zstd filter (3.6.2) can only use zstd's default
/// 8 MiB jobs, whose buffers took a 2-worker writer to 135 MB on incompressible data;
/// small jobs keep it to a few MB whatever the tree. The worker count is fixed, not
/// taken from the machine, so the output is the same bytes everywhere.
final class ZstdSink {
    static let workers: Int32 = 2
    static let jobSize: Int32 = 1 << 20

    let fd: Int32
    let context: OpaquePointer
    private let buffer: UnsafeMutableRawBufferPointer
    private(set) var written: Int64 = 0
    private(set) var error: RootfsError?

    init(fd: Int32, level: Int) throws {
        guard let context = ZSTD_createCCtx() else { throw RootfsError("zstd: out of memory") }
        self.fd = fd
        self.context = context
        buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: ZSTD_CStreamOutSize(), alignment: 16)
        for (parameter, value) in [(ZSTD_c_compressionLevel, Int32(level)), (ZSTD_c_checksumFlag, 1),
                                   (ZSTD_c_nbWorkers, Self.workers), (ZSTD_c_jobSize, Self.jobSize)] {
            let status = ZSTD_CCtx_setParameter(context, parameter, value)
            if ZSTD_isError(status) != 0 {
                throw RootfsError("zstd: cannot set parameter \(parameter.rawValue) to \(value): \(String(cString: ZSTD_getErrorName(status)))")
            }
        }
    }

    deinit {
        ZSTD_freeCCtx(context)
        buffer.deallocate()
    }

    /// Compresses `data` (or, with `end`, finishes the frame) and writes what comes out.
    func compress(_ data: UnsafeRawBufferPointer, end: Bool) -> Bool {
        var input = ZSTD_inBuffer(src: data.baseAddress, size: data.count, pos: 0)
        while true {
            var output = ZSTD_outBuffer(dst: buffer.baseAddress, size: buffer.count, pos: 0)
            let remaining = ZSTD_compressStream2(context, &output, &input, end ? ZSTD_e_end : ZSTD_e_continue)
            if ZSTD_isError(remaining) != 0 {
                error = RootfsError("zstd failed: \(String(cString: ZSTD_getErrorName(remaining)))")
                return false
            }
            do {
                try FS.writeAll(UnsafeRawBufferPointer(rebasing: UnsafeRawBufferPointer(buffer)[0..<output.pos]), to: fd, name: "the output")
            } catch let failure as RootfsError {
                error = failure
                return false
            } catch {
                return false
            }
            written += Int64(output.pos)
            if end ? remaining == 0 : input.pos == input.size { return true }
        }
    }
}

/// A libarchive entry, freed in deinit. Its fields are set through typed
/// setters only: nobody outside this file reaches the raw pointer.
final class ArchiveEntryHandle {
    fileprivate let pointer: OpaquePointer
    init() {
        pointer = archive_entry_new()!
    }
    deinit { archive_entry_free(pointer) }

    var pathDescription: String {
        archive_entry_pathname(pointer).map { String(cString: $0) } ?? "?"
    }

    func clear() { archive_entry_clear(pointer) }
    func setPath(_ bytes: [UInt8]) { bytes.withCString { archive_entry_copy_pathname(pointer, $0) } }
    func setSymlink(_ bytes: [UInt8]) { bytes.withCString { archive_entry_copy_symlink(pointer, $0) } }
    func setHardlink(_ bytes: [UInt8]) { bytes.withCString { archive_entry_copy_hardlink(pointer, $0) } }
    func setMode(_ mode: mode_t) { archive_entry_set_mode(pointer, mode) }
    func setOwner(uid: UInt32, gid: UInt32) {
        archive_entry_set_uid(pointer, Int64(uid))
        archive_entry_set_gid(pointer, Int64(gid))
    }
    func setModificationTime(_ seconds: Int) { archive_entry_set_mtime(pointer, seconds, 0) }
    func setLinkCount(_ count: UInt32) { archive_entry_set_nlink(pointer, count) }
    func setDevice(_ device: dev_t) { archive_entry_set_dev(pointer, device) }
    func setDeviceNumber(_ rdev: dev_t) { archive_entry_set_rdev(pointer, rdev) }
    func setInode(_ inode: Int64) { archive_entry_set_ino64(pointer, inode) }
    func setSize(_ size: Int64) { archive_entry_set_size(pointer, size) }
}

/// A libarchive read handle over a file (any format, any filter), freed in deinit.
public final class ArchiveReader {
    let pointer: OpaquePointer

    public struct Entry: Sendable, Equatable {
        /// The member name exactly as stored: bytes, UTF-8 or not (two names that differ
        /// only in an invalid byte stay two).
        public var pathBytes: [UInt8]
        public var mode: UInt32
        public var uid: Int64
        public var gid: Int64
        public var size: Int64
        public var mtime: Int
        public var symlinkBytes: [UInt8]?
        public var hardlinkBytes: [UInt8]?
        /// The name decoded for messages (invalid UTF-8 becomes U+FFFD): never a key.
        public var path: String { String(decoding: pathBytes, as: UTF8.self) }
        public var symlink: String? { symlinkBytes.map { String(decoding: $0, as: UTF8.self) } }
        public var hardlink: String? { hardlinkBytes.map { String(decoding: $0, as: UTF8.self) } }
        public var rdevMajor: UInt32
        public var rdevMinor: UInt32
        public var ino: Int64
        public var nlink: UInt32
        public var fileType: UInt32 { mode & 0o170000 }
    }

    public init(path: String) throws {
        // A cpio name size libarchive would reserve before reading (0xffffffff: 4 GiB) is refused first.
        try CpioHeaderScan.check(path)
        guard let a = archive_read_new() else { throw RootfsError("libarchive: out of memory") }
        pointer = a
        archive_read_support_filter_all(a)
        archive_read_support_format_all(a)
        if archive_read_open_filename(a, path, 1 << 16) != ARCHIVE_OK {
            throw RootfsError("cannot read \(path): \(archive_error_string(a).map { String(cString: $0) } ?? "?")")
        }
    }

    deinit { archive_read_free(pointer) }

    /// The next entry's header and (when `withData`) its content.
    public func next(withData: Bool = false) throws -> (Entry, [UInt8])? {
        var e: OpaquePointer?
        let rc = archive_read_next_header(pointer, &e)
        if rc == ARCHIVE_EOF { return nil }
        // OK or WARN only: ARCHIVE_RETRY (-10) is above WARN (-20) but is libarchive saying
        // the header was damaged (a corrupt tar header mid-archive): entries would be lost.
        guard rc == ARCHIVE_OK || rc == ARCHIVE_WARN, let e else {
            throw RootfsError("cannot read the archive: \(archive_error_string(pointer).map { String(cString: $0) } ?? "?")")
        }
        func bytes(_ c: UnsafePointer<CChar>?) -> [UInt8]? {
            c.map { Array(UnsafeBufferPointer(start: UnsafeRawPointer($0).assumingMemoryBound(to: UInt8.self), count: strlen($0))) }
        }
        let entry = Entry(
            pathBytes: bytes(archive_entry_pathname(e)) ?? [],
            mode: UInt32(archive_entry_mode(e)),
            uid: archive_entry_uid(e), gid: archive_entry_gid(e),
            size: archive_entry_size(e), mtime: archive_entry_mtime(e),
            symlinkBytes: bytes(archive_entry_symlink(e)),
            hardlinkBytes: bytes(archive_entry_hardlink(e)),
            rdevMajor: UInt32(archive_entry_rdevmajor(e)), rdevMinor: UInt32(archive_entry_rdevminor(e)),
            ino: archive_entry_ino64(e), nlink: UInt32(archive_entry_nlink(e)))
        return (entry, withData ? try readData(of: entry.path) : [])
    }

    /// The content of the entry `next()` just returned.
    public func readData(of path: String = "the entry") throws -> [UInt8] {
        var data: [UInt8] = []
        var buffer = [UInt8](repeating: 0, count: 1 << 16)
        while true {
            let n = buffer.withUnsafeMutableBytes { archive_read_data(pointer, $0.baseAddress, $0.count) }
            if n < 0 { throw RootfsError("cannot read data of \(path)") }
            if n == 0 { break }
            data += buffer.prefix(n)
        }
        return data
    }

    /// Every entry of an archive file.
    public static func list(_ path: String) throws -> [Entry] {
        let reader = try ArchiveReader(path: path)
        var out: [Entry] = []
        while let (e, _) = try reader.next() { out.append(e) }
        return out
    }
}
