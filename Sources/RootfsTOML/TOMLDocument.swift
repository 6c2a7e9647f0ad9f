import Foundation
// Implementation-only: TOMLKit extends String, Array and Dictionary with public members of
// its own (an unlabelled `subscript(key:)` among them), and a module that merely loads it
// sees them (members of transitive imports leak, SE-0444). Imported into RootfsKit, even
// through `internal import`, `[String: String]` code there changed meaning and config.sh's
// values came back empty. An implementation-only import is never loaded by our clients.
@_implementationOnly import TOMLKit

/// TOML documents for rootfs.toml, through TOMLKit (toml++): rootfs has no TOML parser of its own.
public enum TOMLDocument {
    public enum Failure: Error, Sendable {
        /// Not TOML: where and why.
        case syntax(line: Int, column: Int, message: String)
        /// Keys the type does not have, each as its path (["distro", "nmae"]).
        case unknownKeys([[String]])
    }

    /// `T` from `text`, every key of the document used (else `.unknownKeys`); a value of the wrong
    /// type is the DecodingError the type's Codable conformance throws.
    public static func decode<T: Decodable>(_ type: T.Type, from text: String) throws -> T {
        do {
            return try TOMLDecoder(strictDecoding: true).decode(type, from: text)
        } catch let error as TOMLParseError {
            throw Failure.syntax(line: error.source.begin.line, column: error.source.begin.column, message: error.description)
        } catch let error as UnexpectedKeysError {
            // Each path leads to its key and ends with it.
            throw Failure.unknownKeys(error.keys.map { key, path in
                let names = path.map(\.stringValue)
                return names.last == key ? names : names + [key]
            })
        }
    }

    /// `value` as a TOML document.
    public static func encode<T: Encodable>(_ value: T) throws -> String {
        try TOMLEncoder().encode(value)
    }
}
