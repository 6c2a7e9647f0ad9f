import Foundation

/// What `rootfs list` shows: every distro, its main values, where it was
/// found, what it shadows and whether this host can build it.
public struct DistroListing: Sendable, Codable {
    public struct Item: Sendable, Codable {
        public var name: String
        public var osVersion: String?
        public var initProcess: String?
        public var directory: String
        public var foundIn: String
        /// Directories later in the search path whose distro of the same name this one hides.
        public var shadows: [String]
        public var hostToolsPresent: Bool
        public var missingHostTools: [String]
        /// Set when config.sh could not be evaluated.
        public var error: String?
    }

    public var searchPath: [String]
    public var distros: [Item]
    /// What was searched, as a message says it (names ROOTFS_DATA_DIR when no built-in distros/ was found).
    public var searchedText: String? = nil

    public static func make(catalog: DistroCatalog) async throws -> DistroListing {
        var items: [Item] = []
        for entry in catalog.entries() {
            let d = entry.distro
            var item = Item(name: d.name, osVersion: nil, initProcess: nil, directory: d.directory,
                            foundIn: d.searchDirectory.origin.rawValue, shadows: entry.shadowed.map(\.directory),
                            hostToolsPresent: false, missingHostTools: [], error: nil)
            do {
                let config = try await ConfigEvaluator().evaluate(d, environment: ProcessInfo.processInfo.environment,
                                                                  requireHook: false)
                item.osVersion = config.osVersion
                item.initProcess = config.initProcess
                item.missingHostTools = config.missingHostTools()
                item.hostToolsPresent = item.missingHostTools.isEmpty
            } catch {
                item.error = "\(error)"
            }
            items.append(item)
        }
        var listing = DistroListing(searchPath: catalog.searchPath.map { "\($0.path) (\($0.origin.rawValue))" }, distros: items)
        listing.searchedText = DistroCatalog.searchedText(catalog.searchPath)
        return listing
    }

    /// A plain-text table.
    public var table: String {
        var rows = [["DISTRO", "OS_VERSION", "INIT", "HOST TOOLS", "FOUND IN"]]
        var notes: [String] = []
        for item in distros {
            let tools = item.error != nil ? "config error" : item.hostToolsPresent ? "yes" : "missing: " + item.missingHostTools.joined(separator: ", ")
            rows.append([item.name, item.osVersion ?? "-", item.initProcess ?? "-", tools, item.directory])
            for hidden in item.shadows {
                notes.append("\(item.name): \(item.directory) wins over \(hidden) (earlier in the search path)")
            }
            if let error = item.error { notes.append("\(item.name): \(error)") }
        }
        let widths = (0..<rows[0].count).map { col in rows.map { $0[col].count }.max() ?? 0 }
        var out = rows.map { row in
            row.enumerated().map { i, cell in i == row.count - 1 ? cell : cell.padding(toLength: widths[i], withPad: " ", startingAt: 0) }
                .joined(separator: "  ")
        }.joined(separator: "\n")
        if distros.isEmpty { out += "\n(no distros found; searched: \(searchedText ?? searchPath.joined(separator: ", ")))" }
        if !notes.isEmpty { out += "\n\n" + notes.joined(separator: "\n") }
        return out
    }
}
