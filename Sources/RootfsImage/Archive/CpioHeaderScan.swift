import CArchive
import RootfsSupport
import Foundation

/// A pass over a cpio archive's headers before libarchive reads it as one. libarchive
/// reserves a member's name size before it reads the name: a header claiming
/// 0xffffffff bytes (Fuzz/crashes/tree/oom-*) reserves 4 GiB. Here every name size
/// (and data size) is read from the decompressed stream and checked first, so such a
/// header is a clear error. newc/crc ("070701", "070702") and odc ("070707"); anything
/// else (tar, binary cpio) is left to libarchive.
enum CpioHeaderScan {
    /// The longest member name accepted (PATH_MAX is 4096; generous for odd archives).
    static let nameLimit = 1 << 16

    static func check(_ path: String) throws {
        guard let a = archive_read_new() else { throw RootfsError("libarchive: out of memory") }
        defer { archive_read_free(a) }
        archive_read_support_filter_all(a)
        archive_read_support_format_raw(a)
        guard archive_read_open_filename(a, path, 1 << 16) == ARCHIVE_OK else { return }  // libarchive reports it next
        var entry: OpaquePointer?
        guard archive_read_next_header(a, &entry) == ARCHIVE_OK else { return }
        var scanner = Scanner()
        var buffer = [UInt8](repeating: 0, count: 1 << 16)
        while !scanner.done {
            let n = buffer.withUnsafeMutableBytes { archive_read_data(a, $0.baseAddress, $0.count) }
            if n <= 0 { break }
            try scanner.feed(buffer[..<n], archive: path)
        }
    }

    /// A streaming walk over headers: header bytes are collected, everything else skipped.
    struct Scanner {
        private(set) var done = false
        private var header: [UInt8] = []
        private var headerSize = 6
        private var skip: Int64 = 0
        private var name: [UInt8] = []
        private var nameLeft = 0
        private var isNewc = true
        private var members = 0
        /// What follows the name (padding, data): moved into `skip` once the name is read.
        private var pendingSkip: Int64 = 0

        mutating func feed(_ bytes: ArraySlice<UInt8>, archive: String) throws {
            var rest = bytes
            while !rest.isEmpty && !done {
                if skip > 0 {
                    let n = Int(min(skip, Int64(rest.count)))
                    rest = rest.dropFirst(n)
                    skip -= Int64(n)
                    continue
                }
                if nameLeft > 0 {
                    let n = min(nameLeft, rest.count)
                    if name.count < 16 { name += rest.prefix(min(n, 16 - name.count)) }
                    rest = rest.dropFirst(n)
                    nameLeft -= n
                    if nameLeft == 0 {
                        // The trailer ends the archive (what follows is padding, or another archive).
                        if name.starts(with: Array("TRAILER!!!".utf8)) { done = true; return }
                        skip = pendingSkip
                    }
                    continue
                }
                let n = min(headerSize - header.count, rest.count)
                header += rest.prefix(n)
                rest = rest.dropFirst(n)
                guard header.count == headerSize else { continue }
                if headerSize == 6 {
                    let magic = String(decoding: header, as: UTF8.self)
                    guard magic == "070701" || magic == "070702" || magic == "070707" else {
                        // Not (or no longer) a cpio header this scan reads: the first one means not cpio.
                        done = true
                        return
                    }
                    isNewc = magic != "070707"
                    headerSize = isNewc ? 110 : 76
                    continue
                }
                try endHeader(archive: archive)
            }
        }

        private mutating func endHeader(archive: String) throws {
            members += 1
            func field(_ offset: Int, _ length: Int, radix: Int) throws -> Int64 {
                let text = String(decoding: header[offset..<offset + length], as: UTF8.self)
                guard let value = Int64(text, radix: radix), value >= 0 else {
                    throw RootfsError("\(archive): cpio member \(members) has a damaged header (\(text) is not a number)",
                                      hint: "the archive is corrupt; write it again")
                }
                return value
            }
            let nameSize = try isNewc ? field(94, 8, radix: 16) : field(59, 6, radix: 8)
            let fileSize = try isNewc ? field(54, 8, radix: 16) : field(65, 11, radix: 8)
            guard nameSize >= 1, nameSize <= Int64(CpioHeaderScan.nameLimit) else {
                throw RootfsError("\(archive): cpio member \(members) claims a name of \(nameSize) bytes, more than any path holds",
                                  hint: "the archive is corrupt or crafted; a cpio name is at most \(CpioHeaderScan.nameLimit) bytes")
            }
            guard fileSize <= ArchiveTreeReader.maxMemberSize else {
                throw RootfsError("\(archive): cpio member \(members) claims \(fileSize) bytes, more than any image holds",
                                  hint: "the archive is corrupt or crafted")
            }
            name = []
            nameLeft = Int(nameSize)
            // newc pads the header and name to 4 bytes, then the data to 4 bytes.
            let namePad = isNewc ? (4 - (110 + Int(nameSize)) % 4) % 4 : 0
            let dataPad = isNewc ? (4 - Int(fileSize % 4)) % 4 : 0
            pendingSkip = Int64(namePad) + fileSize + Int64(dataPad)
            header = []
            headerSize = 6
        }
    }
}
