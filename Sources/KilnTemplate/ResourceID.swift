/// An Azure resource ID: `/subscriptions/{id}/resourceGroups/{rg}/providers/{namespace}/{type}/{name}[/{type}/{name}]…`.
/// Kiln's local stores key managed images and gallery versions by these IDs, compared without regard to case as Azure does.
public struct ResourceID: Sendable, Hashable, CustomStringConvertible {
    public var subscriptionId: String
    public var resourceGroup: String
    public var providerNamespace: String
    /// (type, name) pairs after the namespace, e.g. [("galleries", "g"), ("images", "def"), ("versions", "1.0.0")].
    public var segments: [Segment]

    public struct Segment: Sendable, Hashable {
        public var type: String
        public var name: String

        public init(type: String, name: String) {
            self.type = type
            self.name = name
        }
    }

    public init?(_ text: String) {
        let parts = text.split(separator: "/", omittingEmptySubsequences: false).map(String.init)
        // "", "subscriptions", sub, "resourceGroups", rg, "providers", ns, type, name, ...
        guard parts.count >= 9, parts.count % 2 == 1, parts[0].isEmpty,
              parts[1].caseInsensitiveEquals("subscriptions"), parts[3].caseInsensitiveEquals("resourceGroups"),
              parts[5].caseInsensitiveEquals("providers") else { return nil }
        guard parts.dropFirst().allSatisfy({ ResourceID.isValidSegment($0) }) else { return nil }
        subscriptionId = parts[2]
        resourceGroup = parts[4]
        providerNamespace = parts[6]
        segments = stride(from: 7, to: parts.count, by: 2).map { Segment(type: parts[$0], name: parts[$0 + 1]) }
    }

    private static func isValidSegment(_ segment: String) -> Bool {
        !segment.isEmpty && !segment.contains { $0 == "<" || $0 == ">" || $0 == " " || $0 == "\\" || $0 == "?" || $0 == "#" }
    }

    public var description: String {
        var text = "/subscriptions/\(subscriptionId)/resourceGroups/\(resourceGroup)/providers/\(providerNamespace)"
        for segment in segments { text += "/\(segment.type)/\(segment.name)" }
        return text
    }

    /// The form used as a key in local stores: lower case, as Azure compares IDs case-insensitively.
    public var key: String { description.lowercased() }

    public var name: String { segments.last?.name ?? "" }

    func matches(namespace: String, types: [String]) -> Bool {
        providerNamespace.caseInsensitiveEquals(namespace) && segments.count == types.count
            && zip(segments, types).allSatisfy { $0.type.caseInsensitiveEquals($1) }
    }

    static func isGUID(_ text: String) -> Bool {
        let groups = text.split(separator: "-", omittingEmptySubsequences: false)
        guard groups.map(\.count) == [8, 4, 4, 4, 12] else { return false }
        return groups.allSatisfy { $0.allSatisfy(\.isHexDigit) }
    }
}

/// The resource ID shapes the template reference uses, with the form shown in error messages.
public enum ResourceIDShape: Sendable {
    case managedImage
    case galleryImage
    case galleryImageVersion
    case subnet
    case userAssignedIdentity

    public var expectedForm: String {
        let prefix = "/subscriptions/<subscriptionId>/resourceGroups/<resourceGroup>/providers/"
        switch self {
        case .managedImage: return prefix + "Microsoft.Compute/images/<imageName>"
        case .galleryImage:
            return prefix + "Microsoft.Compute/galleries/<gallery>/images/<imageDefinition>[/versions/<major.minor.patch>]"
        case .galleryImageVersion:
            return prefix + "Microsoft.Compute/galleries/<gallery>/images/<imageDefinition>/versions/<major.minor.patch|latest>"
        case .subnet: return prefix + "Microsoft.Network/virtualNetworks/<vnet>/subnets/<subnet>"
        case .userAssignedIdentity: return prefix + "Microsoft.ManagedIdentity/userAssignedIdentities/<identityName>"
        }
    }

    /// nil when `text` has this shape; otherwise what is wrong with it.
    public func problem(with text: String) -> String? {
        guard let id = ResourceID(text) else {
            return "expected a resource ID of the form \(expectedForm), found \"\(text)\""
        }
        guard ResourceID.isGUID(id.subscriptionId) else {
            return "expected a subscription ID that is a GUID in \(expectedForm), found \"\(id.subscriptionId)\""
        }
        let shapeOK: Bool
        switch self {
        case .managedImage: shapeOK = id.matches(namespace: "Microsoft.Compute", types: ["images"])
        case .galleryImage:
            if id.matches(namespace: "Microsoft.Compute", types: ["galleries", "images"]) {
                shapeOK = true
            } else if id.matches(namespace: "Microsoft.Compute", types: ["galleries", "images", "versions"]) {
                guard GalleryVersion(id.name) != nil else {
                    return "expected an explicit image version major.minor.patch (integers) in \(expectedForm), found \"\(id.name)\""
                }
                shapeOK = true
            } else {
                shapeOK = false
            }
        case .galleryImageVersion:
            if id.matches(namespace: "Microsoft.Compute", types: ["galleries", "images", "versions"]) {
                guard id.name.caseInsensitiveEquals("latest") || GalleryVersion(id.name) != nil else {
                    return "expected a version major.minor.patch (integers) or latest in \(expectedForm), found \"\(id.name)\""
                }
                shapeOK = true
            } else {
                shapeOK = false
            }
        case .subnet: shapeOK = id.matches(namespace: "Microsoft.Network", types: ["virtualNetworks", "subnets"])
        case .userAssignedIdentity:
            shapeOK = id.matches(namespace: "Microsoft.ManagedIdentity", types: ["userAssignedIdentities"])
        }
        return shapeOK ? nil : "expected a resource ID of the form \(expectedForm), found \"\(text)\""
    }
}

/// A gallery image version: three non-negative integers, ordered numerically.
public struct GalleryVersion: Sendable, Hashable, Comparable, CustomStringConvertible {
    public var major: Int
    public var minor: Int
    public var patch: Int

    public init(major: Int, minor: Int, patch: Int) {
        self.major = major
        self.minor = minor
        self.patch = patch
    }

    public init?(_ text: String) {
        let parts = text.split(separator: ".", omittingEmptySubsequences: false)
        guard parts.count == 3, parts.allSatisfy({ !$0.isEmpty && $0.allSatisfy(\.isASCII) && $0.allSatisfy(\.isNumber) }),
              let major = Int(parts[0]), let minor = Int(parts[1]), let patch = Int(parts[2]),
              major <= Int32.max, minor <= Int32.max, patch <= Int32.max else { return nil }
        self.init(major: major, minor: minor, patch: patch)
    }

    public var description: String { "\(major).\(minor).\(patch)" }

    public static func < (lhs: GalleryVersion, rhs: GalleryVersion) -> Bool {
        (lhs.major, lhs.minor, lhs.patch) < (rhs.major, rhs.minor, rhs.patch)
    }
}
