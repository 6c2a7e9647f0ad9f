import Foundation
import Synchronization

/// `docker://NAME` and `podman://NAME`: an image held by a container engine, given
/// where a TREE is taken. The engine streams the image out (`docker image save`,
/// `podman image save`) into one private archive file, which is then read like any
/// `docker-archive:FILE`: layers applied in process, every digest verified, nothing
/// unpacked on the host. The archive goes through the engine's API, so it works the
/// same for a local engine and for a remote one (DOCKER_HOST, CONTAINER_HOST).
///
/// The archive is needed (rather than reading the pipe) because the image's manifest
/// comes at the end of the stream and the tree reader reads each layer twice: once
/// for the index of what survives, once for content.
public struct EngineImageName: Sendable, Equatable, CustomStringConvertible {
    public var engine: ContainerEngine.Kind
    public var name: String

    public var description: String { "\(engine.rawValue)://\(name)" }

    /// The engine image `text` names, or nil when it names none.
    public static func parse(_ text: String, option: String = "TREE") throws -> EngineImageName? {
        for kind in ContainerEngine.Kind.allCases where text.hasPrefix(kind.rawValue + "://") {
            let name = String(text.dropFirst(kind.rawValue.count + 3))
            try validate(name, text: text, option: option)
            return EngineImageName(engine: kind, name: name)
        }
        return nil
    }

    /// An image reference as engines accept it (`[host[:port]/]path[:tag][@digest]`):
    /// the name becomes one argument of the engine's command line, so anything that
    /// could read as an option (a leading `-`) or that is not in the reference
    /// grammar's alphabet is refused before the engine sees it.
    static func validate(_ name: String, text: String, option: String) throws {
        let hint = "write \(text.prefix(while: { $0 != ":" }))://NAME[:TAG] with an image the engine lists (docker images / podman images)"
        guard let first = name.unicodeScalars.first else {
            throw RootfsError("\(option) \(text) names no image", hint: hint)
        }
        let allowed = name.unicodeScalars.allSatisfy { c in
            (c >= "a" && c <= "z") || (c >= "A" && c <= "Z") || (c >= "0" && c <= "9") || "._-/:@+".unicodeScalars.contains(c)
        }
        let alphanumeric = (first >= "a" && first <= "z") || (first >= "A" && first <= "Z") || (first >= "0" && first <= "9")
        guard allowed, alphanumeric, name.utf8.count <= 4096, !name.contains("//") else {
            throw RootfsError("\(option) \(text) is not an image name", hint: hint)
        }
    }
}

/// The archives `docker://` and `podman://` TREEs were saved into, removed by
/// `removeAll()` (each command calls it when it ends, also after a failure or Ctrl-C).
public final class EngineImageExports: Sendable {
    private let directories = Mutex<[String]>([])
    private let runner: ProcessRunner
    private let environment: [String: String]

    public init(runner: ProcessRunner = ProcessRunner(), environment: [String: String] = ProcessInfo.processInfo.environment) {
        self.runner = runner
        self.environment = environment
    }

    deinit { removeAll() }

    /// `text` itself when it names no engine image; otherwise `docker-archive:FILE`,
    /// FILE holding what the engine saved.
    public func resolve(_ text: String, option: String = "TREE") async throws -> String {
        guard let image = try EngineImageName.parse(text, option: option) else { return text }
        let engine = ContainerEngine.forHost(image.engine, environment: environment)
        guard ProcessRunner.which(engine.binary) != nil else {
            throw RootfsError("\(option) \(text): \(engine.binary) is not installed",
                              hint: "install \(image.engine == .docker ? "docker.io" : "podman"), or save the image elsewhere and give docker-archive:FILE")
        }
        let directory = try makePrivateDirectory()
        directories.withLock { $0.append(directory) }
        let archive = directory + "/image.tar"
        // `--` ends the options: the name was validated, and is never read as one.
        var arguments = ["image", "save", "-o", archive]
        if image.engine == .podman { arguments += ["--format", "docker-archive"] }
        arguments += ["--", image.name]
        do {
            try await runner.capture(ToolCommand(engine.binary, arguments))
        } catch let failure as ToolFailure {
            let said = failure.outputTail.last.map { ": " + $0 } ?? ""
            throw RootfsError("\(option) \(text): \(engine.binary) could not save the image (\(failure.status))\(said)",
                              hint: "check the name with `\(engine.binary) images`; a remote engine is reached through "
                                + (image.engine == .docker ? "DOCKER_HOST or DOCKER_CONTEXT" : "CONTAINER_HOST"))
        }
        return "docker-archive:" + archive
    }

    /// Each of `texts` resolved, in order.
    public func resolve(_ texts: [String], option: String) async throws -> [String] {
        var result: [String] = []
        for text in texts { result.append(try await resolve(text, option: option)) }
        return result
    }

    public func removeAll() {
        let all = directories.withLock { dirs -> [String] in defer { dirs = [] }; return dirs }
        for directory in all { FS.remove(directory) }
    }

    /// A 0700 directory under TMPDIR (or /var/tmp: images can be larger than a tmpfs /tmp).
    private func makePrivateDirectory() throws -> String {
        let base = environment["TMPDIR"].flatMap { $0.isEmpty ? nil : $0 } ?? "/var/tmp"
        var template = Array((base + "/rootfs-image-XXXXXX").utf8CString)
        guard let made = template.withUnsafeMutableBufferPointer({ mkdtemp($0.baseAddress!) }) else {
            throw RootfsError("cannot create a temporary directory in \(base): \(FS.errnoText())",
                              hint: "set TMPDIR to a writable directory with room for the image")
        }
        return String(cString: made)
    }
}
