import Foundation

/// What was built, written into the rootfs like Kata's osbuilder.yaml.
public struct BuildRecord: Sendable, Codable, Equatable {
    public static let guestPath = "/var/lib/osbuilder/osbuilder.yaml"

    public var tool: String = "rootfs"
    public var toolVersion: String
    public var distro: String
    public var osName: String
    public var osVersion: String
    public var architecture: String
    public var packages: [String]
    public var extraPackages: [String]
    public var agentPath: String
    public var agentSHA256: String
    public var agentInit: Bool
    /// Seconds since the epoch: SOURCE_DATE_EPOCH when set, else now.
    public var buildTime: Int
    /// Kata's keys (its create_summary_file): OSBUILDER_VERSION (default: rootfs's version), the agent's
    /// name, AGENT_VERSION ("unknown", as Kata writes without its VERSION file) and KATA_REPO.
    public var osbuilderVersion: String? = nil
    public var agentName: String = ""
    public var agentVersion: String = "unknown"
    public var agentRepository: String = ""

    public var yaml: String {
        func q(_ s: String) -> String {
            var out = "\""
            for c in s.unicodeScalars {
                switch c {
                case "\"": out += "\\\""
                case "\\": out += "\\\\"
                case "\n": out += "\\n"
                default: out.unicodeScalars.append(c)
                }
            }
            return out + "\""
        }
        func list(_ items: [String]) -> String { "[" + items.map(q).joined(separator: ", ") + "]" }
        return """
        ---
        osbuilder:
          tool: \(q(tool))
          url: ""
          version: \(q(osbuilderVersion ?? toolVersion))
          tool-version: \(q(toolVersion))
        rootfs-creation-time: \(q(iso8601(buildTime)))
        description: \(q("\(distro) \(osVersion) guest rootfs built by \(tool) \(toolVersion)"))
        file-format-version: "0.0.2"
        architecture: \(q(architecture))
        base-distro:
          name: \(q(osName))
          distro: \(q(distro))
          version: \(q(osVersion))
          packages:
            default: \(list(packages))
            extra: \(list(extraPackages))
        agent:
          path: \(q(agentPath))
          sha256: \(q(agentSHA256))
          init: \(agentInit)
          url: \(q(agentRepository.isEmpty ? "" : "https://" + agentRepository))
          name: \(q(agentName))
          version: \(q(agentVersion))
          agent-is-init-daemon: \(q(agentInit ? "yes" : "no"))

        """
    }
}
