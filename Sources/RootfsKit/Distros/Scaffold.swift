import Foundation

/// `rootfs new`: a new distro directory from template/ (or a copy of an
/// existing distro), written under a temporary name and renamed into place.
public struct Scaffold: Sendable {
    /// What a new distro is made from.
    public enum Source: Sendable, Equatable {
        /// template/ with @DISTRO@ and @OS_VERSION@ filled in.
        case template(directory: String)
        /// An existing distro, copied as it is.
        case distro(Distro)
    }

    public var name: String
    public var source: Source
    /// The directory that receives `<name>/`.
    public var destinationParent: String
    /// The OS_VERSION default written into config.sh (template only).
    public var osVersion: String

    public var destination: String { destinationParent + "/" + name }

    /// The files template/ must hold.
    public static let templateFiles = ["config.sh", "rootfs_lib.sh", "Dockerfile.in"]

    /// Decides what `rootfs new NAME [--from DISTRO]` will write, and checks it can.
    public static func plan(name: String, from: String?, osVersion: String = "latest", distrosDirs: [String],
                            environment: [String: String] = ProcessInfo.processInfo.environment) throws -> Scaffold {
        try validate(name: name)
        guard !osVersion.isEmpty, osVersion.allSatisfy({ $0.isLetter || $0.isNumber || "._-".contains($0) }) else {
            throw RootfsError("invalid --os-version '\(osVersion)'", hint: "use letters, digits, '.', '_' and '-' (for example 12, 3.21, noble)")
        }
        let parent = try defaultDirectory(distrosDirs: distrosDirs, environment: environment)
        let source: Source
        if let from {
            let catalog = DistroCatalog.standard(distrosDirs: distrosDirs, environment: environment)
            do {
                source = .distro(try catalog.find(from))
            } catch let error as RootfsError {
                throw RootfsError("--from \(from): \(error.message)", hint: error.hint, details: error.details)
            }
        } else {
            guard let data = ProjectData.directory(environment: environment), FS.isDirectory(data + "/template") else {
                throw RootfsError("the template directory (template/) was not found",
                                  hint: "set ROOTFS_DATA_DIR to the directory holding distros/ and template/, or use --from DISTRO")
            }
            let template = data + "/template"
            for file in templateFiles where !FS.isRegularFile(template + "/" + file) {
                throw RootfsError("the template \(template) has no \(file)", hint: "restore it from the rootfs sources")
            }
            source = .template(directory: template)
        }
        let scaffold = Scaffold(name: name, source: source, destinationParent: parent, osVersion: osVersion)
        try scaffold.requireFree()
        return scaffold
    }

    /// Lower-case letters, digits, '-' and '_', starting with a letter or digit.
    public static func validate(name: String) throws {
        let ok = !name.isEmpty && name.count <= 64 && name.unicodeScalars.allSatisfy { c in
            (c >= "a" && c <= "z") || (c >= "0" && c <= "9") || c == "-" || c == "_"
        } && !(name.hasPrefix("-") || name.hasPrefix("_"))
        guard ok else {
            throw RootfsError("invalid distro name '\(name)'",
                              hint: "a distro name is 1 to 64 lower-case letters, digits, '-' and '_', starting with a letter or digit (for example mydistro or my-os_2)")
        }
    }

    /// The first --distros-dir, else the working directory: an installed rootfs's data
    /// directory is not the user's to write into, and a checkout's distros/ is named explicitly.
    public static func defaultDirectory(distrosDirs: [String], environment: [String: String]) throws -> String {
        if let first = distrosDirs.first { return FS.absolute(first) }
        return FileManager.default.currentDirectoryPath
    }

    private func requireFree() throws {
        if FS.exists(destination) {
            throw RootfsError("\(destination) already exists; rootfs new never overwrites a directory",
                              hint: "choose another name, or remove that directory first")
        }
        let grandparent = FS.parent(destinationParent)
        if !FS.isDirectory(destinationParent) && !FS.isDirectory(grandparent) {
            throw RootfsError("the distros directory \(destinationParent) does not exist, nor its parent \(grandparent)",
                              hint: "create it first (mkdir -p \(shellQuote(destinationParent))) or pass another --distros-dir")
        }
        if FS.exists(destinationParent) && !FS.isDirectory(destinationParent) {
            throw RootfsError("\(destinationParent) is not a directory", hint: "pass another --distros-dir")
        }
    }

    /// Writes the distro; returns the files written (relative paths).
    @discardableResult
    public func create() throws -> [String] {
        try requireFree()
        try FS.makeDirectories(destinationParent)
        let work = try FS.makeSiblingTemporaryDirectory(for: destination)
        var moved = false
        defer { if !moved { FS.remove(work) } }
        var written: [String] = []
        switch source {
        case .template(let template):
            for file in Self.templateFiles {
                guard let data = FileManager.default.contents(atPath: template + "/" + file) else {
                    throw RootfsError("cannot read \(template)/\(file)")
                }
                var text = String(decoding: data, as: UTF8.self).replacingOccurrences(of: "@DISTRO@", with: name)
                // Dockerfile.in keeps @OS_VERSION@: it is filled in when the builder image is made.
                if file != "Dockerfile.in" { text = text.replacingOccurrences(of: "@OS_VERSION@", with: osVersion) }
                try text.write(toFile: work + "/" + file, atomically: false, encoding: .utf8)
                written.append(file)
            }
        case .distro(let distro):
            let items = try FileManager.default.contentsOfDirectory(atPath: distro.directory).sorted()
            for item in items {
                try FileManager.default.copyItem(atPath: distro.directory + "/" + item, toPath: work + "/" + item)
                written.append(item)
            }
        }
        // The temporary directory was made 0700; a distro directory is an ordinary one.
        chmod(work, 0o755)
        // Checked again just before the rename: rename(2) would replace an empty directory.
        try requireFree()
        try FS.rename(work, to: destination)
        moved = true
        return written
    }
}
