//! EC2 `DescribeInstances` (Query protocol, signed by hand in `query.rs`):
//! the running instances carrying a tag, for discovery.

use std::collections::BTreeMap;

use super::Aws;
use super::error::ApiError;

const VERSION: &str = "2016-11-15";

/// One running instance and its tags.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Instance {
    pub instance_id: String,
    pub private_ip: Option<String>,
    pub tags: BTreeMap<String, String>,
}

/// Running instances that have the tag key `tag` (all pages, at most `limit`).
pub async fn tagged_instances(
    aws: &Aws,
    tag: &str,
    limit: usize,
) -> Result<Vec<Instance>, ApiError> {
    let mut out = Vec::new();
    let mut token: Option<String> = None;
    loop {
        let mut params = vec![
            ("Filter.1.Name".to_owned(), "tag-key".to_owned()),
            ("Filter.1.Value.1".to_owned(), tag.to_owned()),
            ("Filter.2.Name".to_owned(), "instance-state-name".to_owned()),
            ("Filter.2.Value.1".to_owned(), "running".to_owned()),
            ("MaxResults".to_owned(), "1000".to_owned()),
        ];
        if let Some(token) = &token {
            params.push(("NextToken".to_owned(), token.clone()));
        }
        let page = aws
            .query("ec2", "DescribeInstances", VERSION, &params)
            .await?;
        for reservation in page
            .child("reservationSet")
            .into_iter()
            .flat_map(|r| r.all("item"))
        {
            for item in reservation
                .child("instancesSet")
                .into_iter()
                .flat_map(|i| i.all("item"))
            {
                let Some(id) = item.text_at(&["instanceId"]) else {
                    continue;
                };
                let tags = item
                    .child("tagSet")
                    .into_iter()
                    .flat_map(|t| t.all("item"))
                    .filter_map(|t| {
                        Some((
                            t.text_at(&["key"])?.to_owned(),
                            t.text_at(&["value"]).unwrap_or_default().to_owned(),
                        ))
                    })
                    .collect();
                out.push(Instance {
                    instance_id: id.to_owned(),
                    private_ip: item.text_at(&["privateIpAddress"]).map(str::to_owned),
                    tags,
                });
            }
        }
        token = page
            .text_at(&["nextToken"])
            .filter(|t| !t.is_empty())
            .map(str::to_owned);
        if token.is_none() || out.len() >= limit {
            return Ok(out);
        }
    }
}
