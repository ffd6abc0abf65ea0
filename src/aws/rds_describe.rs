//! RDS `DescribeDBInstances` and `DescribeDBClusters` (Query protocol,
//! signed by hand in `query.rs`): databases, their endpoints, whether IAM
//! authentication is on, and their tags (`TagList`), for discovery and
//! `pam targets check`.

use std::collections::BTreeMap;

use super::Aws;
use super::error::ApiError;
use super::query::Node;

const VERSION: &str = "2014-10-31";

/// An RDS instance or cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Database {
    /// `DBInstanceIdentifier` or `DBClusterIdentifier`.
    pub identifier: String,
    pub arn: String,
    /// `instance` or `cluster`.
    pub class: &'static str,
    pub engine: String,
    pub address: Option<String>,
    pub port: Option<u16>,
    pub iam_auth: bool,
    /// `DBName` / `DatabaseName`.
    pub database: Option<String>,
    /// `DbiResourceId` / `DbClusterResourceId` (the rds-db:connect ARN names it).
    pub resource_id: Option<String>,
    pub tags: BTreeMap<String, String>,
}

/// Every instance (all pages, at most `limit`).
pub async fn instances(aws: &Aws, limit: usize) -> Result<Vec<Database>, ApiError> {
    describe(aws, "DescribeDBInstances", limit).await
}

/// Every cluster (all pages, at most `limit`).
pub async fn clusters(aws: &Aws, limit: usize) -> Result<Vec<Database>, ApiError> {
    describe(aws, "DescribeDBClusters", limit).await
}

/// One instance by identifier.
pub async fn instance(aws: &Aws, identifier: &str) -> Result<Option<Database>, ApiError> {
    let params = [("DBInstanceIdentifier".to_owned(), identifier.to_owned())];
    let page = aws
        .query("rds", "DescribeDBInstances", VERSION, &params)
        .await;
    match page {
        Ok(page) => Ok(parse_page(&page, "DescribeDBInstances")
            .0
            .into_iter()
            .next()),
        Err(e) if e.code.as_deref() == Some("DBInstanceNotFound") => Ok(None),
        Err(e) => Err(e),
    }
}

async fn describe(
    aws: &Aws,
    operation: &'static str,
    limit: usize,
) -> Result<Vec<Database>, ApiError> {
    let mut out = Vec::new();
    let mut marker: Option<String> = None;
    loop {
        let mut params = vec![("MaxRecords".to_owned(), "100".to_owned())];
        if let Some(marker) = &marker {
            params.push(("Marker".to_owned(), marker.clone()));
        }
        let page = aws.query("rds", operation, VERSION, &params).await?;
        let (found, next) = parse_page(&page, operation);
        out.extend(found);
        marker = next;
        if marker.is_none() || out.len() >= limit {
            return Ok(out);
        }
    }
}

/// The databases of one answer page and its `Marker`.
fn parse_page(page: &Node, operation: &str) -> (Vec<Database>, Option<String>) {
    let cluster = operation == "DescribeDBClusters";
    let (result, list, item) = if cluster {
        ("DescribeDBClustersResult", "DBClusters", "DBCluster")
    } else {
        ("DescribeDBInstancesResult", "DBInstances", "DBInstance")
    };
    let Some(result) = page.child(result) else {
        return (Vec::new(), None);
    };
    let mut out = Vec::new();
    for db in result.child(list).into_iter().flat_map(|l| l.all(item)) {
        let text = |path: &[&str]| db.text_at(path).map(str::to_owned);
        let identifier = if cluster {
            text(&["DBClusterIdentifier"])
        } else {
            text(&["DBInstanceIdentifier"])
        };
        let Some(identifier) = identifier else {
            continue;
        };
        let (address, port) = if cluster {
            (text(&["Endpoint"]), text(&["Port"]))
        } else {
            (text(&["Endpoint", "Address"]), text(&["Endpoint", "Port"]))
        };
        let tags = db
            .child("TagList")
            .into_iter()
            .flat_map(|t| t.all("Tag"))
            .filter_map(|t| {
                Some((
                    t.text_at(&["Key"])?.to_owned(),
                    t.text_at(&["Value"]).unwrap_or_default().to_owned(),
                ))
            })
            .collect();
        out.push(Database {
            identifier,
            arn: text(&[if cluster {
                "DBClusterArn"
            } else {
                "DBInstanceArn"
            }])
            .unwrap_or_default(),
            class: if cluster { "cluster" } else { "instance" },
            engine: text(&["Engine"]).unwrap_or_default(),
            address: address.filter(|a| !a.is_empty()),
            port: port.and_then(|p| p.parse().ok()),
            iam_auth: db.text_at(&["IAMDatabaseAuthenticationEnabled"]) == Some("true"),
            database: text(&[if cluster { "DatabaseName" } else { "DBName" }])
                .filter(|d| !d.is_empty()),
            resource_id: text(&[if cluster {
                "DbClusterResourceId"
            } else {
                "DbiResourceId"
            }]),
            tags,
        });
    }
    let marker = result
        .text_at(&["Marker"])
        .filter(|m| !m.is_empty())
        .map(str::to_owned);
    (out, marker)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The shape of a real DescribeDBInstances answer (AWS API reference).
    #[test]
    fn parses_an_instance_page() {
        let xml = r#"<DescribeDBInstancesResponse xmlns="http://rds.amazonaws.com/doc/2014-10-31/">
  <DescribeDBInstancesResult>
    <DBInstances>
      <DBInstance>
        <DBInstanceIdentifier>orders</DBInstanceIdentifier>
        <DBInstanceArn>arn:aws:rds:eu-central-1:123456789012:db:orders</DBInstanceArn>
        <Engine>postgres</Engine>
        <DBName>orders</DBName>
        <Endpoint><Address>orders.abc.eu-central-1.rds.amazonaws.com</Address><Port>5432</Port></Endpoint>
        <IAMDatabaseAuthenticationEnabled>true</IAMDatabaseAuthenticationEnabled>
        <DbiResourceId>db-ABCDEFGHIJKL</DbiResourceId>
        <TagList><Tag><Key>pam:target</Key><Value>orders-prod</Value></Tag></TagList>
      </DBInstance>
    </DBInstances>
    <Marker>next</Marker>
  </DescribeDBInstancesResult>
</DescribeDBInstancesResponse>"#;
        let (dbs, marker) = parse_page(&Node::parse(xml).unwrap(), "DescribeDBInstances");
        assert_eq!(marker.as_deref(), Some("next"));
        assert_eq!(dbs.len(), 1);
        let db = &dbs[0];
        assert_eq!(db.identifier, "orders");
        assert_eq!(db.port, Some(5432));
        assert!(db.iam_auth);
        assert_eq!(db.resource_id.as_deref(), Some("db-ABCDEFGHIJKL"));
        assert_eq!(db.tags["pam:target"], "orders-prod");
    }
}
