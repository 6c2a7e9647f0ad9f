import Glibc

/// An open file descriptor that this value owns: closed exactly once, when the
/// value goes away (or by `close()`), never copied. Every read and write loop
/// of the project goes through it, so short writes and EINTR are handled once.
public struct OwnedFileDescriptor: ~Copyable {
    /// -1 once closed.
    public private(set) var raw: Int32
    /// For error messages: what the descriptor is (a path, "the output").
    public let name: String

    /// Takes ownership of `raw` (which must be open).
    public init(taking raw: Int32, name: String) {
        self.raw = raw
        self.name = name
    }

    /// `open(2)` with O_CLOEXEC added; an error names the path.
    public init(path: String, flags: Int32, mode: mode_t = 0o644, name: String? = nil) throws {
        let fd = Glibc.open(path, flags | O_CLOEXEC, mode)
        guard fd >= 0 else { throw RootfsError("cannot open \(name ?? path): \(FS.errnoText())") }
        self.raw = fd
        self.name = name ?? path
    }

    /// `openat(2)` relative to a directory descriptor, with O_CLOEXEC added.
    public init(at directory: borrowing OwnedFileDescriptor, _ component: [UInt8], flags: Int32, mode: mode_t = 0o644,
                name: String) throws {
        let fd = component.withUnsafeBufferPointer { buf -> Int32 in
            var z = Array(buf); z.append(0)
            return z.withUnsafeBufferPointer { Glibc.openat(directory.raw, UnsafeRawPointer($0.baseAddress!).assumingMemoryBound(to: CChar.self), flags | O_CLOEXEC, mode) }
        }
        guard fd >= 0 else { throw RootfsError("cannot open \(name): \(FS.errnoText())") }
        self.raw = fd
        self.name = name
    }

    deinit { if raw >= 0 { Glibc.close(raw) } }

    /// Gives the descriptor back without closing it: for a descriptor borrowed from a
    /// caller that still owns it, so its writes go through `writeAll` too.
    public mutating func release() -> Int32 {
        let fd = raw
        raw = -1
        return fd
    }

    /// Closes now, reporting a failed close (a delayed write error on some file systems).
    public mutating func close() throws {
        let fd = raw
        raw = -1
        guard fd >= 0 else { return }
        guard Glibc.close(fd) == 0 else { throw RootfsError("cannot close \(name): \(FS.errnoText())") }
    }

    /// Writes all of `bytes` at the current offset, retrying short writes and EINTR.
    public func writeAll(_ bytes: UnsafeRawBufferPointer) throws {
        var done = 0
        while done < bytes.count {
            let n = Glibc.write(raw, bytes.baseAddress! + done, bytes.count - done)
            if n < 0 && errno == EINTR { continue }
            guard n > 0 else { throw RootfsError("cannot write \(name): \(FS.errnoText())", hint: FS.writeFailureHint()) }
            done += n
        }
    }

    public func writeAll(_ bytes: [UInt8]) throws {
        try bytes.withUnsafeBytes { try writeAll($0) }
    }

    /// Writes all of `bytes` at `offset` (pwrite), retrying short writes and EINTR.
    public func writeAll(_ bytes: UnsafeRawBufferPointer, at offset: Int64) throws {
        var done = 0
        while done < bytes.count {
            let (position, overflow) = offset.addingReportingOverflow(Int64(done))
            guard !overflow else { throw RootfsError("cannot write \(name): offset \(offset) is out of range") }
            let n = Glibc.pwrite(raw, bytes.baseAddress! + done, bytes.count - done, off_t(position))
            if n < 0 && errno == EINTR { continue }
            guard n > 0 else { throw RootfsError("cannot write \(name): \(FS.errnoText())", hint: FS.writeFailureHint()) }
            done += n
        }
    }

    public func writeAll(_ bytes: [UInt8], at offset: Int64) throws {
        try bytes.withUnsafeBytes { try writeAll($0, at: offset) }
    }

    /// Reads up to `buffer.count` bytes at the current offset (0 at the end); EINTR retried.
    public func read(into buffer: UnsafeMutableRawBufferPointer) throws -> Int {
        while true {
            let n = Glibc.read(raw, buffer.baseAddress, buffer.count)
            if n < 0 && errno == EINTR { continue }
            guard n >= 0 else { throw RootfsError("cannot read \(name): \(FS.errnoText())") }
            return n
        }
    }

    /// Reads exactly `count` bytes at `offset`, or fewer only at the end of the file.
    public func read(count: Int, at offset: Int64) throws -> [UInt8] {
        guard count >= 0, offset >= 0 else { throw RootfsError("cannot read \(name): offset \(offset) is out of range") }
        var out = [UInt8](repeating: 0, count: count)
        var done = 0
        while done < count {
            let (position, overflow) = offset.addingReportingOverflow(Int64(done))
            guard !overflow else { throw RootfsError("cannot read \(name): offset \(offset) is out of range") }
            let n = out.withUnsafeMutableBytes { Glibc.pread(raw, $0.baseAddress! + done, count - done, off_t(position)) }
            if n < 0 && errno == EINTR { continue }
            guard n >= 0 else { throw RootfsError("cannot read \(name): \(FS.errnoText())") }
            if n == 0 { break }
            done += n
        }
        if done < count { out.removeLast(count - done) }
        return out
    }

    /// Reads from the current offset to the end of the file, refusing more than `limit`
    /// bytes. For kernel files (/proc/self/mountinfo): their size reads as 0 and one
    /// read(2) returns a page at most, so only reading to EOF gives the whole text.
    public func readToEnd(limit: Int) throws -> [UInt8] {
        var out: [UInt8] = []
        let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: 64 << 10, alignment: 16)
        defer { buffer.deallocate() }
        while true {
            let n = try read(into: buffer)
            if n == 0 { return out }
            guard out.count <= limit - n else { throw RootfsError("cannot read \(name): it is larger than \(limit) bytes") }
            out.append(contentsOf: UnsafeRawBufferPointer(rebasing: buffer[0..<n]))
        }
    }

    /// Copies everything from `input` to this descriptor through a 1 MiB buffer.
    public func copyAll(from input: borrowing OwnedFileDescriptor) throws {
        let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: 1 << 20, alignment: 4096)
        defer { buffer.deallocate() }
        while true {
            let n = try input.read(into: buffer)
            if n == 0 { return }
            try writeAll(UnsafeRawBufferPointer(rebasing: buffer[0..<n]))
        }
    }

    public func size() throws -> Int64 {
        var st = stat()
        guard fstat(raw, &st) == 0 else { throw RootfsError("cannot stat \(name): \(FS.errnoText())") }
        return Int64(st.st_size)
    }
}

extension FS {
    /// The hint for a failed write: a full disk is the usual cause.
    static func writeFailureHint(_ code: Int32 = errno) -> String? {
        code == ENOSPC || code == EDQUOT ? "the disk holding the output is full: free space or choose another output directory" : nil
    }
}
