import RootfsSupport
import Foundation

/// What an output's file name says about its format, decided before any work: a name whose
/// extension disagrees with `--format`, or whose extension rootfs does not know, is an error,
/// never a raw disk written under a `.qcow2` (or `.qcow`) name.
extension OutputFormat {
    /// Every name ending `infer(fromPath:)` knows, for messages.
    public static var knownExtensions: String {
        var seen = Set<String>()
        return extensionTable.map(\.0).filter { seen.insert($0).inserted }.joined(separator: " ")
    }

    /// The extension-like ending of a file name: after its last dot, 1 to 10 letters and digits with
    /// at least one letter. `bb-1.0`, `guest` and `.hidden` have none (their format is --format's).
    public static func nameExtension(_ path: String) -> String? {
        let name = FS.basename(path)
        guard let dot = name.lastIndex(of: "."), dot != name.startIndex else { return nil }
        let ext = name[name.index(after: dot)...]
        guard (1...10).contains(ext.count), ext.allSatisfy({ $0.isASCII && ($0.isLetter || $0.isNumber) }),
              ext.contains(where: \.isLetter) else { return nil }
        return String(ext)
    }

    /// Whether a file named `path` may hold this format: its ending is this format's, or the one
    /// this format shares (raw-efi's NAME-efi.img is a .img, dynamic-vhd's a .vhd, tar-kernel-initrd's
    /// a .tar, every ISO a .iso), or Kata's and LinuxKit's NAME-initrd.img, NAME-squashfs.img and NAME-erofs.img.
    public func accepts(path: String) -> Bool {
        guard let inferred = OutputFormat.infer(fromPath: path), inferred != self else { return true }
        switch (self, inferred) {
        case (.rawEFI, .raw), (.qcow2EFI, .qcow2), (.dynamicVHD, .vhd), (.tarKernelInitrd, .tar): return true
        // Every ISO is a .iso: NAME.iso infers iso-bios, and --format picks the EFI or hybrid one.
        case (.isoEFI, .isoBios), (.isoEFIInitrd, .isoBios), (.isoHybrid, .isoBios): return true
        case (.initrd, .raw), (.squashfs, .raw), (.erofs, .raw):
            return FS.basename(path).lowercased().hasSuffix(rawValue + ".img")
        default: return false
        }
    }

    /// The format of the file `path` given to `option`: `explicit` (--format), which the name's
    /// extension must not contradict; else the one the extension names; else `fallback`. An
    /// extension rootfs does not know is refused when it would decide the format.
    public static func resolve(path: String, explicit: OutputFormat?, option: String,
                               fallback: OutputFormat?) throws -> OutputFormat {
        if let explicit {
            guard explicit.accepts(path: path) else {
                let inferred = infer(fromPath: path)!
                let ending = extensionTable.first { FS.basename(path).lowercased().hasSuffix($0.0) }!.0
                let stem = String(FS.basename(path).dropLast(ending.count))
                let suggestion = explicit.fileExtension.isEmpty ? "" : "name it \(stem)\(explicit.fileExtension), or "
                throw RootfsError("\(option) \(path) ends in \(ending), a \(inferred.rawValue) name, but --format says \(explicit.rawValue)",
                                  hint: "\(suggestion)drop --format and let the extension decide (\(inferred.rawValue))")
            }
            return explicit
        }
        if let inferred = infer(fromPath: path) { return inferred }
        if let ext = nameExtension(path) {
            throw RootfsError("\(option) \(path): .\(ext) is not an extension rootfs knows, so it cannot tell which format to write",
                              hint: "end the name in one of \(knownExtensions), or name the format with --format F (\(names))")
        }
        guard let fallback else {
            throw RootfsError("\(option) \(path) has no extension to take the format from",
                              hint: "end the name in one of \(knownExtensions), or name the format with --format F (\(names))")
        }
        return fallback
    }
}

extension FS {
    /// Refuses, before any work, a file output named like a directory: `-o out/` or an existing
    /// directory would be written under a temporary name and fail only on the final rename.
    public static func requireFileOutputName(_ output: String, option: String, hint: String? = nil) throws {
        var st = stat()
        let existingDirectory = lstat(output, &st) == 0 && (st.st_mode & S_IFMT) == S_IFDIR
        guard output.hasSuffix("/") || existingDirectory else { return }
        let dir = output.hasSuffix("/") ? String(output.dropLast()) : output
        throw RootfsError("\(option) \(output) \(existingDirectory ? "is a directory" : "ends in /"): \(option) names the file to write",
                          hint: hint ?? "give a file name, e.g. \(option) \(dir.isEmpty ? "" : dir + "/")NAME")
    }
}
