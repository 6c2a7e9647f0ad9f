import Foundation

/// One `--disk`: the user's file, or a scratch disk of a size.
public enum ExtraDisk: Sendable, Equatable {
    case file(String)
    case scratch(bytes: Int64)

    /// An existing file is a FILE; otherwise the value must be a size.
    public static func parse(_ text: String) throws -> ExtraDisk {
        if FileManager.default.fileExists(atPath: text) { return .file(text) }
        if let bytes = try ScratchDisk.parseSize(text) { return .scratch(bytes: bytes) }
        throw RootfsError("--disk \(text) is neither an existing file nor a size",
                          hint: "give a size for a scratch disk (64M, 1G: removed after the boot) or the path of a raw or qcow2 disk")
    }
}

/// `rootfs boot --disk SIZE|FILE`: an extra disk for the guest. A FILE is the user's own
/// (written to); a SIZE is a sparse raw file made in the boot's temporary space and removed
/// after the boot, so a guest can get a scratch disk without anything left behind.
public enum ScratchDisk {
    /// The largest scratch disk: 16 TiB, beyond which a typo is likelier than a wish.
    public static let maxBytes: Int64 = 16 << 40

    /// `64M`, `1G`, `512K`, `2T` (powers of 1024; an optional `iB` or `B`), or bytes;
    /// nil when `text` is not a size. A size too large or zero is an error.
    public static func parseSize(_ text: String, option: String = "--disk") throws -> Int64? {
        var digits = Substring(text)
        for suffix in ["iB", "B"] where digits.hasSuffix(suffix) && digits.count > suffix.count {
            digits = digits.dropLast(suffix.count)
            break
        }
        var shift = 0
        if let last = digits.last, let found = ["K": 10, "M": 20, "G": 30, "T": 40][String(last).uppercased()] {
            shift = found
            digits = digits.dropLast()
        }
        guard !digits.isEmpty, digits.allSatisfy(\.isASCII), digits.allSatisfy(\.isNumber) else { return nil }
        let tooLarge = RootfsError("\(option) \(text) is larger than a scratch disk may be (at most 16T)",
                                   hint: "give a size such as 64M or 4G")
        guard let count = Int64(digits) else { throw tooLarge }
        let (bytes, overflow) = count.multipliedReportingOverflow(by: Int64(1) << shift)
        guard !overflow, bytes <= maxBytes else { throw tooLarge }
        guard bytes >= 4096 else {
            throw RootfsError("\(option) \(text) is smaller than a disk (at least 4K)", hint: "give a size such as 64M")
        }
        // NVMe namespaces come in 512-byte blocks: rounded up.
        return (bytes + 511) / 512 * 512
    }

    /// A sparse file of `bytes` at `path` (created, 0600, never an existing file).
    public static func create(at path: String, bytes: Int64) throws {
        var file = try OwnedFileDescriptor(path: path, flags: O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW, mode: 0o600)
        guard ftruncate(file.raw, off_t(bytes)) == 0 else {
            throw RootfsError("cannot make the scratch disk \(path) \(formatBytes(bytes)) large: \(FS.errnoText())")
        }
        try file.close()
    }
}
