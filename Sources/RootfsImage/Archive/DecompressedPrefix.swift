import CArchive
import RootfsSupport

/// The first bytes of a compressed file's content (gzip, zstd, xz, lz4, bzip2, lzma: every
/// filter libarchive has), read in process and only as far as asked. What a compressed file
/// holds is told by those bytes: a cpio (an initrd) or a tar (a root file system) look the
/// same from outside.
public enum DecompressedPrefix {
    /// Up to `count` bytes of the decompressed stream of `path`; nil when the file is not a
    /// compressed stream libarchive knows, or its first block does not decode.
    public static func read(path: String, count: Int) -> [UInt8]? {
        guard count > 0, let a = archive_read_new() else { return nil }
        defer { archive_read_free(a) }
        archive_read_support_filter_all(a)
        archive_read_support_format_raw(a)
        guard archive_read_open_filename(a, path, 1 << 16) == ARCHIVE_OK else { return nil }
        var entry: OpaquePointer?
        guard archive_read_next_header(a, &entry) == ARCHIVE_OK else { return nil }
        // Not compressed at all: the raw format passes plain files through, which is not ours to say.
        guard archive_filter_count(a) > 1 else { return nil }
        var out: [UInt8] = []
        var buffer = [UInt8](repeating: 0, count: min(count, 1 << 16))
        while out.count < count {
            let want = min(buffer.count, count - out.count)
            let n = buffer.withUnsafeMutableBytes { archive_read_data(a, $0.baseAddress, want) }
            if n < 0 { return out.isEmpty ? nil : out }
            if n == 0 { break }
            out += buffer.prefix(n)
        }
        return out
    }

    /// `bytes` start a tar archive: "ustar" at 257 (POSIX and GNU tar).
    public static func isTar(_ bytes: [UInt8]) -> Bool {
        bytes.count >= 262 && Array(bytes[257..<262]) == Array("ustar".utf8)
    }

    /// `bytes` start a cpio archive: newc, crc, odc or old binary.
    public static func isCpio(_ bytes: [UInt8]) -> Bool {
        if bytes.count >= 6, ["070701", "070702", "070707"].contains(where: { Array($0.utf8) == Array(bytes.prefix(6)) }) { return true }
        return bytes.count >= 2 && (Array(bytes.prefix(2)) == [0xc7, 0x71] || Array(bytes.prefix(2)) == [0x71, 0xc7])
    }
}
