import Foundation

/// A guest path (or name) for a terminal or a log: printable UTF-8 is kept, a backslash is doubled,
/// control characters and bytes that are not UTF-8 become `\n`, `\t` or `\xNN` (as `ls -b` does),
/// so an odd name can neither break a line nor hide as another name.
public func displayPath(_ bytes: [UInt8]) -> String {
    var out = ""
    var index = 0
    while index < bytes.count {
        let b = bytes[index]
        // The length of the UTF-8 sequence starting here, when it is a valid one.
        var length = 0
        if b < 0x80 { length = 1 }
        else if b >= 0xc2 && b <= 0xdf { length = 2 }
        else if b >= 0xe0 && b <= 0xef { length = 3 }
        else if b >= 0xf0 && b <= 0xf4 { length = 4 }
        if length > 1, index + length <= bytes.count,
           let s = String(validating: bytes[index..<(index + length)], as: UTF8.self),
           let scalar = s.unicodeScalars.first, !scalar.properties.generalCategory.isControlOrFormat {
            out += s
            index += length
            continue
        }
        switch b {
        case UInt8(ascii: "\\"): out += "\\\\"
        case 0x0a: out += "\\n"
        case 0x09: out += "\\t"
        case 0x0d: out += "\\r"
        case 0x20..<0x7f: out.append(Character(Unicode.Scalar(b)))
        default: out += (b < 0x10 ? "\\x0" : "\\x") + String(b, radix: 16, uppercase: false)
        }
        index += 1
    }
    return out
}

extension Unicode.GeneralCategory {
    /// Controls, formats (bidirectional overrides), separators other than space, unassigned.
    var isControlOrFormat: Bool {
        switch self {
        case .control, .format, .lineSeparator, .paragraphSeparator, .unassigned, .surrogate, .privateUse: return true
        default: return false
        }
    }
}
