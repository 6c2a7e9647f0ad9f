import RootfsSupport
import CArchive
import Foundation

/// Where one layer's bytes are, and what they must hash to.
struct LayerBlob: Sendable {
    enum Origin: Sendable {
        /// A blob file of an OCI layout.
        case file(String)
        /// A member of an uncompressed outer tar (a `docker save` archive), by name.
        case member(archive: String, name: [UInt8])
    }
    var origin: Origin
    /// The sha256 (hex) of the blob's bytes as stored.
    var sha256: String
    /// The size from the descriptor, when the format gives one.
    var size: Int64?
    var mediaType: String
    /// How errors name the layer: "layer 2 (sha256:...)".
    var label: String
}

/// The bytes of a blob read in chunks, hashed and counted on the way, so that the
/// pass that reads a layer also proves its digest.
final class BlobStream {
    let blob: LayerBlob
    private var fd: Int32 = -1
    private var outer: ArchiveReader?
    private var hasher = SHA256()
    private(set) var count: Int64 = 0
    let buffer: UnsafeMutableRawBufferPointer
    var error: RootfsError?

    init(_ blob: LayerBlob) throws {
        self.blob = blob
        buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: 1 << 18, alignment: 16)
        switch blob.origin {
        case .file(let path):
            fd = open(path, O_RDONLY | O_CLOEXEC)
            guard fd >= 0 else {
                buffer.deallocate()
                throw RootfsError("cannot read \(blob.label) at \(path): \(FS.errnoText())", hint: "the image layout is incomplete: copy it again")
            }
        case .member(let archive, let name):
            let reader = try ArchiveReader(path: archive)
            var found = false
            while let (entry, _) = try reader.next() {
                if entry.pathBytes == name && entry.fileType == FileType.reg { found = true; break }
            }
            guard found else {
                buffer.deallocate()
                throw RootfsError("\(archive) has no member \(String(decoding: name, as: UTF8.self)) for \(blob.label)",
                                  hint: "give the file `docker save -o FILE IMAGE` wrote, complete")
            }
            outer = reader
        }
    }

    deinit {
        if fd >= 0 { close(fd) }
        buffer.deallocate()
    }

    /// The next chunk into `buffer`: its length, 0 at the end, -1 on an error (in `error`).
    func fill() -> Int {
        let n: Int
        if let outer {
            n = archive_read_data(outer.pointer, buffer.baseAddress, buffer.count)
            if n < 0 {
                error = RootfsError("cannot read \(blob.label): \(archive_error_string(outer.pointer).map { String(cString: $0) } ?? "?")")
                return -1
            }
        } else {
            var r: Int
            repeat { r = read(fd, buffer.baseAddress, buffer.count) } while r < 0 && errno == EINTR
            if r < 0 {
                error = RootfsError("cannot read \(blob.label): \(FS.errnoText())")
                return -1
            }
            n = r
        }
        hasher.update(UnsafeRawBufferPointer(rebasing: buffer[0..<n]))
        count += Int64(n)
        if let size = blob.size, count > size {
            error = RootfsError("\(blob.label) is longer than its descriptor's \(size) bytes",
                                hint: "the image layout is corrupt or was changed after it was written: copy it again")
            return -1
        }
        return n
    }

    /// Reads what is left and checks the size and the digest.
    func finishAndVerify() throws {
        while true {
            let n = fill()
            if n < 0 { throw error! }
            if n == 0 { break }
        }
        if let size = blob.size, count != size {
            throw RootfsError("\(blob.label) has \(count) bytes, its descriptor says \(size)",
                              hint: "the image layout is corrupt or was changed after it was written: copy it again")
        }
        let actual = SHA256.hex(hasher.finalize())
        guard actual == blob.sha256 else {
            throw RootfsError("\(blob.label) does not match its digest: expected sha256:\(blob.sha256), read sha256:\(actual)",
                              hint: "the image layout is corrupt or was changed after it was written: copy it again")
        }
    }
}

/// A layer's tar read through libarchive from a BlobStream (any compression libarchive
/// detects: gzip, zstd, none). Every member name goes through the tree source's guards.
final class LayerArchive {
    let stream: BlobStream
    let pointer: OpaquePointer
    /// The ordinal of the member whose header was read last (-1 before the first).
    private(set) var ordinal = -1

    init(_ blob: LayerBlob) throws {
        stream = try BlobStream(blob)
        guard let a = archive_read_new() else { throw RootfsError("libarchive: out of memory") }
        pointer = a
        archive_read_support_filter_all(a)
        archive_read_support_format_tar(a)
        let read: @convention(c) (OpaquePointer?, UnsafeMutableRawPointer?, UnsafeMutablePointer<UnsafeRawPointer?>?) -> Int = { _, client, out in
            let stream = Unmanaged<BlobStream>.fromOpaque(client!).takeUnretainedValue()
            let n = stream.fill()
            out?.pointee = UnsafeRawPointer(stream.buffer.baseAddress)
            return n
        }
        let status = archive_read_open(a, Unmanaged.passUnretained(stream).toOpaque(), nil, read, nil)
        if status != ARCHIVE_OK {
            throw stream.error ?? RootfsError("cannot read \(blob.label) as a tar: \(archive_error_string(a).map { String(cString: $0) } ?? "?")",
                                              hint: "a layer is a tar, plain or compressed with gzip or zstd")
        }
    }

    deinit { archive_read_free(pointer) }

    /// The next member's header, nil at the end.
    func next() throws -> OpaquePointer? {
        var e: OpaquePointer?
        let rc = archive_read_next_header(pointer, &e)
        if rc == ARCHIVE_EOF { return nil }
        guard rc >= ARCHIVE_WARN, let e else {
            throw stream.error ?? RootfsError("cannot read \(stream.blob.label): \(archive_error_string(pointer).map { String(cString: $0) } ?? "?")",
                                              hint: "a layer is a tar, plain or compressed with gzip or zstd")
        }
        ordinal += 1
        return e
    }

    /// Reads the current member's content.
    func read(into buffer: UnsafeMutableRawBufferPointer, name: String) throws -> Int {
        let n = archive_read_data(pointer, buffer.baseAddress, buffer.count)
        if n < 0 {
            throw stream.error ?? RootfsError("cannot read \(name) from \(stream.blob.label): \(archive_error_string(pointer).map { String(cString: $0) } ?? "?")")
        }
        return n
    }
}
