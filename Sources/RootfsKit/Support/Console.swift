import Foundation

/// Where the build talks to the user: progress and notes on stderr, results
/// on stdout, and everything into an optional log file.
public final class Console: @unchecked Sendable {
    public enum Level: Int, Sendable { case quiet = 0, normal = 1, verbose = 2 }
    public var level: Level
    private let lock = NSLock()
    private var log: FileHandle?
    public private(set) var logPath: String?
    private let start = Date()

    public init(level: Level = .normal) { self.level = level }

    /// Sends every following line to `path` as well (appending).
    public func openLog(at path: String) throws {
        lock.lock(); defer { lock.unlock() }
        if !FileManager.default.createFile(atPath: path, contents: nil) {
            throw RootfsError("cannot create the log file \(path)")
        }
        log = FileHandle(forWritingAtPath: path)
        logPath = path
    }

    public func closeLog() {
        lock.lock(); defer { lock.unlock() }
        try? log?.close()
        log = nil
    }

    /// A phase starts: `==> name`.
    public func phase(_ name: String) { emit("==> \(name)", minimum: .normal) }
    public func info(_ text: String) { emit(text, minimum: .normal) }
    public func detail(_ text: String) { emit(text, minimum: .verbose) }
    public func warning(_ text: String) { emit("warning: \(text)", minimum: .quiet) }

    /// A line of a tool's output, indented under its phase.
    public func toolLine(_ text: String) { emit("  | " + text, minimum: .verbose, alwaysLog: true, normalToo: true) }

    /// A result line on stdout (paths, sizes): printed whatever the level.
    public func result(_ text: String) {
        lock.lock(); defer { lock.unlock() }
        FileHandle.standardOutput.write(Data((text + "\n").utf8))
        log?.write(Data((text + "\n").utf8))
    }

    public var elapsed: TimeInterval { Date().timeIntervalSince(start) }

    private func emit(_ text: String, minimum: Level, alwaysLog: Bool = true, normalToo: Bool = false) {
        lock.lock(); defer { lock.unlock() }
        let show = level.rawValue >= minimum.rawValue || (normalToo && level != .quiet)
        let data = Data((text + "\n").utf8)
        if show { FileHandle.standardError.write(data) }
        if alwaysLog { log?.write(data) }
    }
}

/// Formats a byte count for people: 1.4 MiB.
public func formatBytes(_ bytes: Int64) -> String {
    let units = ["B", "KiB", "MiB", "GiB", "TiB"]
    var value = Double(bytes)
    var unit = 0
    while value >= 1024 && unit < units.count - 1 { value /= 1024; unit += 1 }
    return unit == 0 ? "\(bytes) B" : String(format: "%.1f %@", value, units[unit])
}
