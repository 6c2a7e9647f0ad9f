import RootfsSupport

/// One line of a `debugfs -f` command file, built from bytes.
///
/// debugfs reads its command file with `fgets` into a BUFSIZ buffer, cuts the
/// line at the first `\n` or `\r`, and hands it to libss, which runs any line
/// whose first non-blank byte is `!` through `system()`. A word taken from a
/// guest (a file name, a link target) must therefore never be able to end the
/// line, be cut off into a line of its own, or be read as anything but one
/// argument. So:
/// - every line starts with a command word of ours (never guest bytes);
/// - every guest-derived word is wrapped in double quotes, a quote inside it
///   doubled (libss's only quoting rule), so blanks and `!` stay inside it;
/// - a word holding NUL, LF or CR is refused: debugfs has no way to express
///   those bytes, and each one would end or truncate the line;
/// - a line longer than `maximumLineLength` is refused: `fgets` would split it
///   and the remainder, guest bytes, would become a line of its own.
public struct DebugfsCommand: Sendable, Equatable {
    /// Well under glibc's BUFSIZ (8192) that debugfs reads lines into.
    public static let maximumLineLength = 4000

    public private(set) var bytes: [UInt8]

    /// `command` is one of ours, such as "sif" or "symlink": plain letters.
    public init(_ command: String) {
        precondition(!command.isEmpty && command.utf8.allSatisfy { ($0 >= 97 && $0 <= 122) || $0 == 95 },
                     "debugfs commands are fixed lower-case words")
        bytes = Array(command.utf8)
    }

    /// A word we wrote ourselves (a field name, a number, `<inode>`): only
    /// letters, digits and `_@<>[]-` so that it cannot need quoting.
    public func literal(_ word: String) -> DebugfsCommand {
        precondition(!word.isEmpty && word.utf8.allSatisfy(Self.isLiteralByte), "not a literal debugfs word: \(word)")
        var copy = self
        copy.bytes.append(32)
        copy.bytes += word.utf8
        return copy
    }

    /// A word that may come from a guest: quoted, or refused.
    public func quoted(_ word: [UInt8], what: @autoclosure () -> String) throws -> DebugfsCommand {
        var copy = self
        copy.bytes.append(32)
        copy.bytes += try Self.quote(word, what: what())
        return copy
    }

    /// The line with its newline, or an error when it is too long to be read as one line.
    public func line(what: @autoclosure () -> String) throws -> [UInt8] {
        guard bytes.count < Self.maximumLineLength else {
            throw RootfsError("\(what()) is too long (\(bytes.count) bytes) to be passed to debugfs",
                              hint: "shorten the path, or use the native ext4 writer, which takes any name")
        }
        return bytes + [10]
    }

    /// `"word"` with inner quotes doubled; NUL, LF and CR refused.
    public static func quote(_ word: [UInt8], what: String) throws -> [UInt8] {
        if let bad = word.first(where: { $0 == 0 || $0 == 10 || $0 == 13 }) {
            let name = bad == 0 ? "a NUL byte" : bad == 10 ? "a newline" : "a carriage return"
            throw RootfsError("\(what) holds \(name), which debugfs cannot be given safely",
                              hint: "rename it, or use the native ext4 writer (the default), which takes any name")
        }
        var out: [UInt8] = [34]
        out.reserveCapacity(word.count + 2)
        for b in word {
            out.append(b)
            if b == 34 { out.append(34) }
        }
        out.append(34)
        return out
    }

    static func isLiteralByte(_ b: UInt8) -> Bool {
        (b >= 48 && b <= 57) || (b >= 65 && b <= 90) || (b >= 97 && b <= 122)
            || b == 95 || b == 64 || b == 60 || b == 62 || b == 91 || b == 93 || b == 45
    }
}

/// A printable rendering of guest bytes for messages: quoted, control bytes escaped.
func debugName(_ bytes: [UInt8]) -> String {
    String(decoding: bytes, as: UTF8.self).debugDescription
}
