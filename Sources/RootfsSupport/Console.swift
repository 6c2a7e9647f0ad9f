import Foundation

/// Where the build talks to the user: progress and notes on stderr, results
/// on stdout, and everything into the log files (the build's build.log and
/// the user's --log-file). Colours and the live progress line appear only
/// when stderr is a terminal, never with NO_COLOR set.
public final class Console: @unchecked Sendable {
    public enum Level: Int, Sendable { case quiet = 0, normal = 1, verbose = 2 }
    public var level: Level
    /// Results (`result`) go to stderr instead of stdout: `--json` keeps stdout for the document.
    public var resultsToStandardError = false
    /// Whether stderr is a terminal (live progress line) and may be coloured.
    public let interactive: Bool
    public let colors: Bool
    private let lock = NSLock()
    private var log: FileHandle?
    private var userLog: FileHandle?
    public private(set) var logPath: String?
    private let start = Date()
    private var currentPhase: (name: String, start: Date)?
    private var finishedPhases: [PhaseTime] = []
    private var progressShown = false
    private var lastProgress = Date.distantPast
    private var spinner = 0
    /// The phase the ticker belongs to (a new phase starts a new ticker) and whether the
    /// phase line is still the terminal's last line (then the ticker rewrites it in place).
    private var phaseGeneration = 0
    private var linesSincePhase = 0
    private var tickerShown = false
    private var reported = false

    /// How long one phase took.
    public struct PhaseTime: Sendable, Equatable, Codable {
        public var name: String
        public var seconds: Double
    }

    public init(level: Level = .normal, environment: [String: String] = ProcessInfo.processInfo.environment,
                interactive: Bool = isatty(2) == 1) {
        self.level = level
        self.interactive = interactive && environment["TERM"] != "dumb"
        self.colors = self.interactive && (environment["NO_COLOR"] ?? "").isEmpty
    }

    /// Sends every following line to `path` as well (the build's log; replaced at each build).
    public func openLog(at path: String) throws {
        lock.lock(); defer { lock.unlock() }
        log = try Self.create(path)
        logPath = path
    }

    public func closeLog() {
        lock.lock(); defer { lock.unlock() }
        try? log?.close()
        log = nil
    }

    /// `--log-file`: every line, whatever the level, also goes to `path` (created or truncated).
    public func openUserLog(at path: String) throws {
        lock.lock(); defer { lock.unlock() }
        userLog = try Self.create(path)
    }

    private static func create(_ path: String) throws -> FileHandle {
        guard FileManager.default.createFile(atPath: path, contents: nil), let handle = FileHandle(forWritingAtPath: path) else {
            throw RootfsError("cannot create the log file \(path): \(FS.errnoText())",
                              hint: "check that its directory exists and is writable")
        }
        return handle
    }

    /// A phase starts: `==> name`. The previous phase, if still open, ends.
    public func phase(_ name: String) {
        endPhase(quietly: true)
        lock.lock()
        currentPhase = (name, Date())
        lastProgress = Date()
        phaseGeneration += 1
        let generation = phaseGeneration
        lock.unlock()
        emit("==> \(name)", minimum: .normal, color: "1;34")
        lock.lock()
        linesSincePhase = 0
        lock.unlock()
        if interactive && level != .quiet { startTicker(generation) }
    }

    /// On a terminal only: every second, the phase's elapsed time (`==> name (17 s)`), so a
    /// tool that prints nothing for a while is seen to be running. The phase line itself is
    /// rewritten while it is the last line; after other lines, a status line at the bottom
    /// (cleared before the next line, as the progress line is). Never in logs or pipes.
    private func startTicker(_ generation: Int) {
        let thread = Thread { [weak self] in
            while true {
                Thread.sleep(forTimeInterval: 1)
                guard let self, self.tick(generation) else { return }
            }
        }
        thread.start()
    }

    /// One tick; false once the phase has ended.
    private func tick(_ generation: Int) -> Bool {
        lock.lock(); defer { lock.unlock() }
        guard generation == phaseGeneration, let phase = currentPhase else { return false }
        // A writer's live progress line has the bottom line.
        if progressShown && !tickerShown { return true }
        let suffix = " (\(Int(Date().timeIntervalSince(phase.start))) s)"
        let text = colored("==> \(phase.name)", "1;34") + suffix
        // In place only when the phase line is one row: one row up would land inside a wrapped line.
        var size = winsize()
        let known = withUnsafeMutablePointer(to: &size) { ioctl(2, UInt(TIOCGWINSZ), $0) } == 0 && size.ws_col > 0
        let columns = known ? Int(size.ws_col) : 80
        if linesSincePhase == 0 && 4 + phase.name.count + suffix.count < columns {
            FileHandle.standardError.write(Data("\u{1b}[1A\r\u{1b}[K\(text)\n".utf8))
        } else {
            // A status line below, cut to the width (a wrapped one could not be cleared).
            var status = "    (\(Int(Date().timeIntervalSince(phase.start))) s) \(phase.name)"
            if columns > 1 && status.count >= columns { status = String(status.prefix(columns - 1)) }
            FileHandle.standardError.write(Data("\r\u{1b}[K\(status)".utf8))
            progressShown = true
            tickerShown = true
        }
        return true
    }

    /// The name of the phase running now (nil: none).
    public var currentPhaseName: String? {
        lock.lock(); defer { lock.unlock() }
        return currentPhase?.name
    }

    /// Whether `report` has shown an error (a command's error handler then does not repeat it).
    public var errorReported: Bool {
        lock.lock(); defer { lock.unlock() }
        return reported
    }

    /// A line for the log files only (build.log, --log-file), not the terminal.
    public func record(_ text: String) {
        lock.lock(); defer { lock.unlock() }
        let data = Data((text + "\n").utf8)
        log?.write(data)
        userLog?.write(data)
    }

    /// A command's final error (`error: ` with its details and hint): on stderr whatever the
    /// level, and in the log files, so a failed build's logs end with what stopped it.
    public func report(_ error: any Error) {
        lock.lock(); defer { lock.unlock() }
        clearProgressLocked()
        let text = "\(error)\n"
        FileHandle.standardError.write(Data((colored("error:", "1;31") + " " + text).utf8))
        log?.write(Data(("error: " + text).utf8))
        userLog?.write(Data(("error: " + text).utf8))
        reported = true
    }

    /// The current phase ends: `    done in 1.2 s`, and its time is kept for the summary.
    public func endPhase(quietly: Bool = false) {
        lock.lock()
        guard let phase = currentPhase else { lock.unlock(); return }
        currentPhase = nil
        if tickerShown { clearProgressLocked() }
        let seconds = Date().timeIntervalSince(phase.start)
        finishedPhases.append(PhaseTime(name: phase.name, seconds: seconds))
        lock.unlock()
        if !quietly { info(String(format: "    done in %.1f s", seconds)) }
    }

    /// The phases finished so far, in order.
    public var phases: [PhaseTime] {
        lock.lock(); defer { lock.unlock() }
        return finishedPhases
    }

    public func info(_ text: String) { emit(text, minimum: .normal) }
    public func detail(_ text: String) { emit(text, minimum: .verbose) }
    public func warning(_ text: String) { emit("warning: \(text)", minimum: .quiet, color: "1;33") }
    /// An error message (`error: ...`), always shown.
    public func error(_ text: String) { emit("error: \(text)", minimum: .quiet, color: "1;31") }

    /// A line of a tool's output, indented under its phase.
    public func toolLine(_ text: String) { emit("  | " + text, minimum: .verbose, normalToo: true) }

    /// A result line (paths, sizes): printed whatever the level, on stdout
    /// (stderr with `resultsToStandardError`).
    public func result(_ text: String) {
        lock.lock(); defer { lock.unlock() }
        clearProgressLocked()
        let data = Data((text + "\n").utf8)
        linesSincePhase += 1
        (resultsToStandardError ? FileHandle.standardError : FileHandle.standardOutput).write(data)
        log?.write(data)
        userLog?.write(data)
    }

    /// Progress of a long step. On a terminal: one line redrawn in place with a
    /// spinner (at most 10 times a second). Otherwise: a plain line every
    /// `plainInterval` seconds, so CI logs stay readable. `final` always prints.
    public func progress(_ text: String, final: Bool = false, plainInterval: TimeInterval = 5) {
        guard level != .quiet else { return }
        lock.lock(); defer { lock.unlock() }
        let now = Date()
        if interactive {
            if final {
                clearProgressLocked()
                FileHandle.standardError.write(Data("    \(text)\n".utf8))
                linesSincePhase += 1
            } else if now.timeIntervalSince(lastProgress) >= 0.1 {
                let frames = ["|", "/", "-", "\\"]
                spinner = (spinner + 1) % frames.count
                FileHandle.standardError.write(Data("\r\u{1b}[K    \(frames[spinner]) \(text)".utf8))
                progressShown = true
                tickerShown = false
                linesSincePhase += 1
                lastProgress = now
            }
        } else if final || now.timeIntervalSince(lastProgress) >= plainInterval {
            FileHandle.standardError.write(Data("    \(text)\n".utf8))
            lastProgress = now
        }
        if final { userLog?.write(Data("    \(text)\n".utf8)); log?.write(Data("    \(text)\n".utf8)) }
    }

    public var elapsed: TimeInterval { Date().timeIntervalSince(start) }

    /// `text` in an SGR colour when colours are on.
    public func colored(_ text: String, _ sgr: String) -> String {
        colors ? "\u{1b}[\(sgr)m\(text)\u{1b}[0m" : text
    }

    private func clearProgressLocked() {
        if progressShown {
            FileHandle.standardError.write(Data("\r\u{1b}[K".utf8))
            progressShown = false
            tickerShown = false
        }
    }

    private func emit(_ text: String, minimum: Level, normalToo: Bool = false, color: String? = nil) {
        lock.lock(); defer { lock.unlock() }
        let show = level.rawValue >= minimum.rawValue || (normalToo && level != .quiet)
        let data = Data((text + "\n").utf8)
        if show {
            clearProgressLocked()
            let shown = color.map { colored(text, $0) + "\n" }.map { Data($0.utf8) } ?? data
            FileHandle.standardError.write(shown)
            linesSincePhase += 1
        }
        log?.write(data)
        userLog?.write(data)
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
