import ArgumentParser
import Foundation
import RootfsKit

struct CpCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "cp",
        abstract: "Copy a file or a directory out of an image (any format rootfs writes) to the host.",
        discussion: """
        SOURCE is IMAGE:PATH, PATH absolute inside the image (rootfs ls takes the same IMAGEs). PATH is \
        resolved inside the image: its links are followed there (absolute ones from the image's root) and \
        .. stops at the image's root, so nothing outside the image is read. A directory is copied with \
        everything below it; links below it are copied as links (targets unchanged, never followed), hard \
        links stay hard links, modes and times are kept, and owners and device nodes too when run as root. \
        DEST may be an existing directory (the copy goes inside it under its own name) or a new name; a file \
        replaces an existing file, a directory is never merged into an existing one. The copy is written \
        under a temporary name and renamed at the end.
        """)

    @OptionGroup var global: GlobalOptions
    @Argument(help: "IMAGE:PATH") var source: String
    @Argument(help: "The host path to write.") var destination: String

    /// Splits IMAGE:PATH at the first ":/" whose left side names an image that exists
    /// (an image path may hold ':' itself, and oci:DIR:TAG does).
    static func split(_ text: String) throws -> (image: String, path: String) {
        var search = text.startIndex
        while let range = text.range(of: ":/", range: search..<text.endIndex) {
            let image = String(text[..<range.lowerBound])
            let path = String(text[text.index(after: range.lowerBound)...])
            if FS.exists(image) { return (image, path) }
            if let reference = try? ImageReference.parse(image), FS.exists(reference.path) { return (image, path) }
            if (try? EngineImageName.parse(image, option: "IMAGE")) != nil { return (image, path) }
            search = range.upperBound
        }
        throw RootfsError("\(text) names no image and path inside it",
                          hint: "write IMAGE:/PATH with an image that exists, e.g. rootfs cp disk.img:/etc/os-release .")
    }

    func run() async throws {
        let (source, destination) = (source, destination)
        let console = global.makeConsole()
        try await CommandRunner.run {
            let (image, path) = try Self.split(source)
            let exports = EngineImageExports()
            defer { exports.removeAll() }
            let opened = try await ImageOpener.open(try await exports.resolve(image, option: "IMAGE"))
            defer { opened.close() }
            let result = try ImageCopy.copy(opened, path: Array(path.utf8), to: destination)
            if result.skippedDevices > 0 {
                console.warning("\(result.skippedDevices) device node(s) left out: only root can create them")
            }
            console.result(result.isDirectory
                           ? "\(result.destination): \(result.entries) entries copied from \(image)"
                           : "\(result.destination): \(result.bytes) bytes copied from \(image)")
        }
    }
}
