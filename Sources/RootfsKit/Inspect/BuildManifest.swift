import Foundation

/// `<name>.manifest.json`, written next to a build's outputs: what was built,
/// from what, with which packages, and the digests of the outputs. Sorted and
/// stamped with SOURCE_DATE_EPOCH when set, so the same build gives the same bytes.
public struct BuildManifest: Sendable, Codable, Equatable {
    public struct Tool: Sendable, Codable, Equatable {
        public var name = "rootfs"
        public var version: String
        /// The commit the tool was built from (RootfsVersion.buildCommit), or "unknown".
        public var commit: String? = nil
        /// Where `commit` comes from: "checkout" (git, the checkout the binary lives in),
        /// "install" (recorded by scripts/install.sh), or what is missing when it is unknown.
        public var commitSource: String? = nil
    }
    public struct Distro: Sendable, Codable, Equatable {
        public var name: String
        public var osName: String
        public var version: String
        public var architecture: String
    }
    public struct Agent: Sendable, Codable, Equatable {
        public var guestPath: String
        public var source: String
        public var sha256: String
        public var isInit: Bool
    }
    public struct Options: Sendable, Codable, Equatable {
        public var packages: [String]
        public var extraPackages: [String]
        public var initProcess: String
        public var compression: String
        public var freeSpaceMiB: Int
        public var sourceDateEpoch: Int?
    }
    public struct Output: Sendable, Codable, Equatable {
        public var kind: String
        public var path: String
        public var bytes: Int64?
        public var sha256: String?
        /// A `--verity` disk: its root hash, salt and blocks, and the root-hash file beside it.
        public var verity: VerityParameters? = nil
        public var rootHashFile: String? = nil
    }

    public var manifestVersion = 1
    public var tool: Tool
    public var buildTime: String
    public var distro: Distro
    public var packageDatabase: String
    public var packages: [InstalledPackage]
    public var packagesNote: String?
    public var agent: Agent
    public var options: Options
    public var outputs: [Output]
    /// Every option of the build, resolved (flags, config file, environment, defaults), in
    /// the shape of rootfs.toml: `rootfs build --from-manifest` replays the build from it.
    public var config: RootfsConfig? = nil

    /// The manifest of a finished build, from the facts the output stage hands over.
    public static func make(facts: ManifestFacts, inventory: PackageInventory,
                            outputs: [BuildOutput]) -> BuildManifest {
        BuildManifest(
            tool: Tool(version: RootfsVersion.version, commit: facts.toolCommit?.commit, commitSource: facts.toolCommit?.source),
            buildTime: iso8601(facts.buildTime),
            distro: Distro(name: facts.distro, osName: facts.osName, version: facts.osVersion,
                           architecture: facts.architecture),
            packageDatabase: inventory.database.rawValue,
            packages: inventory.packages,
            packagesNote: inventory.note,
            agent: Agent(guestPath: facts.agentGuestPath, source: facts.agentSource, sha256: facts.agentSHA256,
                         isInit: facts.agentInit),
            options: Options(packages: facts.packages, extraPackages: facts.extraPackages,
                             initProcess: facts.initProcess, compression: facts.compression.rawValue,
                             freeSpaceMiB: facts.freeSpaceMiB, sourceDateEpoch: facts.sourceDateEpoch),
            outputs: outputs.map { Output(kind: $0.kind, path: $0.path, bytes: $0.kind == "rootfs" ? nil : $0.bytes, sha256: $0.sha256,
                                           verity: $0.verity, rootHashFile: $0.rootHashFile) },
            config: facts.config)
    }

    public func json() throws -> Data {
        try jsonDocument(self)
    }

    /// The SPDX 2.3 document (JSON) describing the same build: the image as the
    /// root package, containing every installed package and the agent.
    public func spdx() throws -> Data {
        try jsonDocument(SPDXDocument(self))
    }
}

/// What a manifest says about a build, as plain facts (the build hands them
/// over; the manifest does not know the build's plan).
public struct ManifestFacts: Sendable, Equatable {
    public var distro: String
    public var osName: String
    public var osVersion: String
    public var architecture: String
    public var agentGuestPath: String
    public var agentSource: String
    public var agentSHA256: String
    public var agentInit: Bool
    public var packages: [String]
    public var extraPackages: [String]
    public var initProcess: String
    public var compression: Compression
    public var freeSpaceMiB: Int
    public var sourceDateEpoch: Int?
    /// Seconds since 1970 (SOURCE_DATE_EPOCH when set).
    public var buildTime: Int
    /// The tool's commit and where it was read (nil: not asked).
    public var toolCommit: RootfsVersion.BuildCommit? = nil
    /// The resolved option set (nil: the caller recorded none).
    public var config: RootfsConfig? = nil

    public init(distro: String, osName: String, osVersion: String, architecture: String, agentGuestPath: String,
                agentSource: String, agentSHA256: String, agentInit: Bool, packages: [String], extraPackages: [String],
                initProcess: String, compression: Compression, freeSpaceMiB: Int, sourceDateEpoch: Int?, buildTime: Int) {
        self.distro = distro
        self.osName = osName
        self.osVersion = osVersion
        self.architecture = architecture
        self.agentGuestPath = agentGuestPath
        self.agentSource = agentSource
        self.agentSHA256 = agentSHA256
        self.agentInit = agentInit
        self.packages = packages
        self.extraPackages = extraPackages
        self.initProcess = initProcess
        self.compression = compression
        self.freeSpaceMiB = freeSpaceMiB
        self.sourceDateEpoch = sourceDateEpoch
        self.buildTime = buildTime
    }
}

/// Encodes a document the way every JSON output of rootfs looks: sorted keys, indented, a final newline.
public func jsonDocument<T: Encodable>(_ value: T) throws -> Data {
    let encoder = JSONEncoder()
    encoder.outputFormatting = [.prettyPrinted, .sortedKeys, .withoutEscapingSlashes]
    var data = try encoder.encode(value)
    data.append(0x0a)
    return data
}

/// A minimal SPDX 2.3 document (https://spdx.github.io/spdx-spec/v2.3/).
struct SPDXDocument: Encodable {
    struct CreationInfo: Encodable {
        var created: String
        var creators: [String]
    }
    struct Checksum: Encodable {
        var algorithm = "SHA256"
        var checksumValue: String
    }
    struct ExternalRef: Encodable {
        var referenceCategory = "PACKAGE-MANAGER"
        var referenceType = "purl"
        var referenceLocator: String
    }
    struct Package: Encodable {
        var SPDXID: String
        var name: String
        var versionInfo: String?
        var downloadLocation = "NOASSERTION"
        var filesAnalyzed = false
        var licenseConcluded = "NOASSERTION"
        var licenseDeclared = "NOASSERTION"
        var copyrightText = "NOASSERTION"
        var primaryPackagePurpose: String?
        var checksums: [Checksum]?
        var externalRefs: [ExternalRef]?
        var comment: String?
    }
    struct Relationship: Encodable {
        var spdxElementId: String
        var relationshipType: String
        var relatedSpdxElement: String
    }

    var spdxVersion = "SPDX-2.3"
    var dataLicense = "CC0-1.0"
    var SPDXID = "SPDXRef-DOCUMENT"
    var name: String
    var documentNamespace: String
    var creationInfo: CreationInfo
    var documentDescribes: [String]
    var packages: [Package]
    var relationships: [Relationship]

    init(_ m: BuildManifest) {
        name = "\(m.distro.name)-\(m.distro.version)-rootfs"
        let rootID = "SPDXRef-Rootfs"
        var packages: [Package] = []
        var relationships: [Relationship] = [Relationship(spdxElementId: "SPDXRef-DOCUMENT", relationshipType: "DESCRIBES",
                                                          relatedSpdxElement: rootID)]
        let image = m.outputs.first { $0.kind == "image" } ?? m.outputs.first { $0.kind == "initrd" }
        packages.append(Package(SPDXID: rootID, name: name, versionInfo: m.distro.version,
                                primaryPackagePurpose: "OPERATING-SYSTEM",
                                checksums: image?.sha256.map { [Checksum(checksumValue: $0)] },
                                comment: "built by rootfs \(m.tool.version) for \(m.distro.architecture)"
                                    + (image.map { "; checksum of \($0.kind) \(FS.basename($0.path))" } ?? "")))
        packages.append(Package(SPDXID: "SPDXRef-Agent", name: FS.basename(m.agent.guestPath), versionInfo: nil,
                                primaryPackagePurpose: "APPLICATION", checksums: [Checksum(checksumValue: m.agent.sha256)],
                                comment: "installed at \(m.agent.guestPath)"))
        relationships.append(Relationship(spdxElementId: rootID, relationshipType: "CONTAINS", relatedSpdxElement: "SPDXRef-Agent"))
        let purlType = ["dpkg": "deb", "rpm": "rpm", "apk": "apk"][m.packageDatabase]
        for (index, p) in m.packages.enumerated() {
            let id = "SPDXRef-Package-\(index + 1)-" + String(p.name.map { $0.isLetter || $0.isNumber || $0 == "." || $0 == "-" ? $0 : "-" })
            var refs: [ExternalRef]?
            if let purlType {
                let ns = Self.purlEncode(m.distro.osName.lowercased().split(separator: " ").first.map(String.init) ?? m.distro.name)
                var purl = "pkg:\(purlType)/\(ns)/\(Self.purlEncode(p.name))@\(Self.purlEncode(p.version))"
                if !p.architecture.isEmpty { purl += "?arch=\(Self.purlEncode(p.architecture))" }
                refs = [ExternalRef(referenceLocator: purl)]
            }
            packages.append(Package(SPDXID: id, name: p.name, versionInfo: p.version, externalRefs: refs))
            relationships.append(Relationship(spdxElementId: rootID, relationshipType: "CONTAINS", relatedSpdxElement: id))
        }
        self.packages = packages
        self.relationships = relationships
        documentDescribes = [rootID]
        creationInfo = CreationInfo(created: m.buildTime, creators: ["Tool: rootfs-\(m.tool.version)"])
        // A stable namespace: the same build gives the same document.
        var digestInput = name + "\n" + m.buildTime + "\n"
        for p in m.packages { digestInput += "\(p.name) \(p.version) \(p.architecture)\n" }
        for o in m.outputs { digestInput += "\(o.kind) \(o.sha256 ?? "")\n" }
        let digest = SHA256.hexDigest(of: Array(digestInput.utf8))
        documentNamespace = "urn:uuid:" + [digest.prefix(8), digest.dropFirst(8).prefix(4), digest.dropFirst(12).prefix(4),
                                           digest.dropFirst(16).prefix(4), digest.dropFirst(20).prefix(12)].joined(separator: "-")
    }

    /// Percent-encodes everything but the characters purl leaves as they are.
    static func purlEncode(_ s: String) -> String {
        var out = ""
        for byte in s.utf8 {
            let c = Character(UnicodeScalar(byte))
            if (c.isASCII && (c.isLetter || c.isNumber)) || ".-_~".contains(c) { out.append(c) }
            else { out += String(format: "%%%02X", byte) }
        }
        return out
    }
}
